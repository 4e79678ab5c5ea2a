-- bench/limits.lua: the wrk script of bench/limits (`make bench-limits`). Every proxy in the run
-- gets the same request mix, so the limit rules (bench/configs/full-limits.yaml) and nginx's
-- limit_req zones (bench/configs/nginx-limits.conf) see realistic keys, and the proxies without
-- limits parse the very same bytes:
--   GET /api/items/<item>   1000 items; 40 % of requests go to the 10 hottest (ids 1..10, so the
--                           hot-item sketch marks them hot), the rest are spread over all 1000
--   Cookie: member=m<N>     10000 members, uniform
--   User-Agent              12 browser / app strings with varying version numbers
-- The requests are built once per wrk thread (a fixed seed, so every run and every proxy get the
-- same sequence) and replayed in a cycle: the script costs wrk a table lookup per request.
--
-- Knobs (environment variables, read by wrk's Lua): BENCH_MEMBERS (10000), BENCH_ITEMS (1000),
-- BENCH_HOT_ITEMS (10), BENCH_HOT_SHARE (0.4), BENCH_DISTINCT (50000 prebuilt requests).

local function env_num(name, default)
  local v = tonumber(os.getenv(name) or "")
  if v == nil then return default end
  return v
end

local members = env_num("BENCH_MEMBERS", 10000)
local items = env_num("BENCH_ITEMS", 1000)
local hot_items = env_num("BENCH_HOT_ITEMS", 10)
local hot_share = env_num("BENCH_HOT_SHARE", 0.4)
local distinct = env_num("BENCH_DISTINCT", 50000)

local agents = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.%d.%d Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.%d.%d Safari/537.36",
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.%d.%d Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:%d.0) Gecko/20100101 Firefox/%d.%d",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/%d.%d Safari/605.1.%d",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_%d like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.%d Mobile/15E%d Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; Pixel %d) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.%d.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Linux; Android 13; SM-S9%d1B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.%d.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36 Edg/%d.0.%d.0",
  "ShopApp/%d.%d.%d (iOS 17.4; iPhone15,2)",
  "ShopApp/%d.%d.%d (Android 14; Pixel 8)",
  "okhttp/4.%d.%d",
}

local requests = {}
local n = 0

function init(args)
  math.randomseed(20261122)
  local host = wrk.headers["Host"]
  for i = 1, distinct do
    local item
    if math.random() < hot_share then
      item = math.random(1, hot_items)
    else
      item = math.random(1, items)
    end
    local fmt = agents[math.random(1, #agents)]
    local ua = string.format(fmt, math.random(110, 124), math.random(1, 9), math.random(1, 200))
    local headers = {
      ["Host"] = host,
      ["User-Agent"] = ua,
      ["Accept"] = "application/json",
      ["Cookie"] = "member=m" .. math.random(1, members),
    }
    requests[i] = wrk.format("GET", "/api/items/" .. item, headers)
  end
end

function request()
  n = n + 1
  if n > distinct then n = 1 end
  return requests[n]
end
