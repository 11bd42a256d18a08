-- Argo CD health check for slatedb.io/v1alpha1 DatabaseCheckpointSchedule (slatedb-operator).
-- Order: terminating, no status, generation not yet observed, Stalled (a bad schedule or template, or the
-- newest checkpoint failed), suspended, Ready (the last run succeeded), otherwise Progressing (waiting
-- for the first checkpoint).
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

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the schedule"
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

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "The schedule is suspended"
  return hs
end

local ready = condition(conditions, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = nonEmpty(ready.message) and ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the first checkpoint"
if ready ~= nil and nonEmpty(ready.message) then
  hs.message = ready.message
end
return hs
