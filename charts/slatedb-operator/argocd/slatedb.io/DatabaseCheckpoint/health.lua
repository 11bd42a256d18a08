-- Argo CD health check for slatedb.io/v1alpha1 DatabaseCheckpoint (slatedb-operator).
-- Order: terminating, generation not yet observed, Stalled, Expired, Ready, otherwise Progressing.
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

-- Deletion waits for the operator to delete the SlateDB checkpoint (per deletionPolicy) and, while clones are still
-- being initialized from it, for the source-protection finalizer.
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  if obj.metadata.finalizers ~= nil and #obj.metadata.finalizers > 0 then
    hs.message = "Pending deletion; blocked by finalizers: " .. table.concat(obj.metadata.finalizers, ", ")
  end
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the DatabaseCheckpoint"
  return hs
end

-- Conditions describe an older spec until the operator has observed the current generation.
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local conditions = obj.status.conditions

-- Stalled is set only for permanent failures; transient ones keep the checkpoint Progressing while it retries.
local stalled = condition(conditions, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = nonEmpty(stalled.message) and stalled.message or stalled.reason or "Stalled"
  return hs
end

-- spec.lifetime elapsed: the SlateDB checkpoint expired and the object is kept on purpose, so GitOps does not
-- re-create it.
local expired = condition(conditions, "Expired")
if isTrue(expired) then
  hs.status = "Suspended"
  hs.message = "expired"
  if nonEmpty(expired.message) then
    hs.message = "expired: " .. expired.message
  end
  return hs
end

local ready = condition(conditions, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = nonEmpty(ready.message) and ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the checkpoint to become ready"
if ready ~= nil and nonEmpty(ready.message) then
  hs.message = ready.message
end
if obj.status.progress ~= nil and nonEmpty(obj.status.progress.percent) then
  hs.message = hs.message .. " (" .. obj.status.progress.percent .. ")"
end
return hs
