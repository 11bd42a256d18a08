-- Argo CD health check for slatedb.io/v1alpha1 DatabaseStore (slatedb-operator).
-- Order: terminating, generation not yet observed, Stalled, Ready, otherwise Progressing. A store has no
-- Suspended state: it is either answering with its credentials or not.
local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

local function nonEmpty(s)
  return s ~= nil and s ~= ""
end

local hs = {}

-- Deletion waits (the in-use finalizer) until no checkpoint or clone names the store.
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  local blocked = obj.status ~= nil and condition(obj.status.conditions, "DeletionBlocked") or nil
  if isTrue(blocked) and nonEmpty(blocked.message) then
    hs.message = "Pending deletion; " .. blocked.message
  end
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to probe the DatabaseStore"
  return hs
end

if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local conditions = obj.status.conditions

local stalled = condition(conditions, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = nonEmpty(stalled.message) and stalled.message or stalled.reason or "Stalled"
  return hs
end

local ready = condition(conditions, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = nonEmpty(ready.message) and ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the store to answer"
if ready ~= nil and nonEmpty(ready.message) then
  hs.message = ready.message
end
return hs
