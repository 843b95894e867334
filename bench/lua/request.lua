-- One API request per call, for wrk: method, path, body and headers from the environment.
--   BM_KEY          the project's API key (Authorization: Bearer ...)
--   BM_KEYS         several projects' keys, comma-separated: each request takes one at random
--   BM_METHOD       GET or POST (default POST)
--   BM_PATH         the path; "{user}" is replaced by the user of this request
--   BM_BODY         the JSON body (POST)
--   BM_USERS        1: every request for user "hot"; N > 1: a random user of u0 .. u{N-1}
--   BM_IDEMPOTENCY  "1": a unique Idempotency-Key header on every request
--   BM_NONCE        makes the keys unique across runs
local key = os.getenv("BM_KEY") or ""
local keys = {}
for each in string.gmatch(os.getenv("BM_KEYS") or "", "[^,]+") do
  table.insert(keys, each)
end
local method = os.getenv("BM_METHOD") or "POST"
local path = os.getenv("BM_PATH") or "/healthz"
local body = os.getenv("BM_BODY")
local users = tonumber(os.getenv("BM_USERS") or "1")
local idempotent = os.getenv("BM_IDEMPOTENCY") == "1"
local nonce = os.getenv("BM_NONCE") or tostring(os.time())
local threads = 0
local counter = 0
tid = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
end

function request()
  counter = counter + 1
  local user = "hot"
  if users > 1 then
    user = "u" .. math.random(0, users - 1)
  end
  local bearer = key
  if #keys > 0 then
    bearer = keys[math.random(1, #keys)]
  end
  local headers = {["Authorization"] = "Bearer " .. bearer, ["Content-Type"] = "application/json"}
  if idempotent then
    headers["Idempotency-Key"] = nonce .. "-" .. tid .. "-" .. counter
  end
  local target = (path:gsub("{user}", user))
  if method == "GET" then
    return wrk.format("GET", target, headers)
  end
  return wrk.format(method, target, headers, body)
end
