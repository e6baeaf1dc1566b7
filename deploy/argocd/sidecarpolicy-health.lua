-- Argo CD health check for sidecar.dev/SidecarPolicy and ClusterSidecarPolicy (the same
-- status), read from the status sidecar-operator writes. A policy is Healthy when its Ready
-- condition is True (this includes a selector that matches nothing yet), Progressing while the operator has not caught up with the policy's
-- generation or is still rolling it out, Suspended while its rollout is paused
-- (spec.rollout.paused), and Degraded when Ready is False for any other reason (Conflict,
-- InvalidPolicy, GuardrailRefused, BlockedByOtherPolicy, RolloutStopped, UnsupportedServer).
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for sidecar-operator to report on this policy"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for sidecar-operator to observe generation " .. tostring(generation)
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for sidecar-operator to set the Ready condition"
  return hs
end
local message = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and ready.reason == "RolloutPaused" then
  hs.status = "Suspended"
elseif ready.status == "False" and ready.reason ~= "Progressing" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
