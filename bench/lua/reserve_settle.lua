-- Reserve then settle, for wrk: each thread alternates POST .../reservations and POST
-- /api/v1/reservations/{id}/settle. Run with one connection per thread (-c equal to -t) so
-- that every response answers the request just sent.
--   BM_KEY, BM_USERS as in request.lua
local key = os.getenv("BM_KEY") or ""
local users = tonumber(os.getenv("BM_USERS") or "1")
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
local pending = nil
local last = "reserve"
tid = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
end

function request()
  if pending ~= nil then
    local id = pending
    pending = nil
    last = "settle"
    return wrk.format("POST", "/api/v1/reservations/" .. id .. "/settle", headers, '{"cost": 0.005}')
  end
  local user = "hot"
  if users > 1 then
    user = "u" .. math.random(0, users - 1)
  end
  last = "reserve"
  return wrk.format("POST", "/api/v1/users/" .. user .. "/reservations", headers, '{"model": "gpt-4o-mini", "estimated_cost": 0.01}')
end

function response(status, response_headers, body)
  if last == "reserve" and status == 201 then
    pending = body:match('"id"%s*:%s*"?([^",}%s]+)')
  end
end
