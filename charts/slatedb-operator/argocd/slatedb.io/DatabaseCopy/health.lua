-- Argo CD health check for slatedb.io/v1alpha1 DatabaseCopy (slatedb-operator).
-- Order: terminating, generation not yet observed, Stalled, Promoted, Ready, otherwise Progressing.
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

-- Deletion waits for the operator to remove the copy's Job and, per deletionPolicy, its data.
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
  hs.message = "Waiting for the operator to reconcile the DatabaseCopy"
  return hs
end

if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local conditions = obj.status.conditions

-- Stalled: a permanent failure. An earlier complete copy may still be Ready, but it is no longer kept up to date.
local stalled = condition(conditions, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = nonEmpty(stalled.message) and stalled.message or stalled.reason or "Stalled"
  return hs
end

local promoted = condition(conditions, "Promoted")
if isTrue(promoted) then
  hs.status = "Healthy"
  hs.message = "promoted"
  if nonEmpty(promoted.message) then
    hs.message = "promoted: " .. promoted.message
  end
  return hs
end

-- Ready stays true while a newer checkpoint is copied: the complete copy at the target is intact.
local ready = condition(conditions, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = nonEmpty(ready.message) and ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the copy to complete"
local reconciling = condition(conditions, "Reconciling")
if isTrue(reconciling) and nonEmpty(reconciling.message) then
  hs.message = reconciling.message
end
if obj.status.progress ~= nil and nonEmpty(obj.status.progress.percent) then
  hs.message = hs.message .. " (" .. obj.status.progress.percent .. ")"
end
return hs
