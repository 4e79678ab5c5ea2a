-- bench/risk-e2e.lua: the wrk script of bench/risk-e2e. Browser-shaped requests with headers in
-- the browsers' own wire order and case (the risk phase fingerprints them), so both proxies parse
-- the very same bytes and sluice+risk runs every signal on realistic input:
--   GET /api/items/<item> (70 %) and GET /item/<item> (30 %), 1000 items
--   Chrome / Firefox / Safari header sets, Cookie: member=m<N>; device=d<N> (10000 each),
--   X-Forwarded-For from 5000 client addresses (the proxies trust 127.0.0.1)
-- Prebuilt once per thread (fixed seed) and replayed in a cycle.
local distinct = tonumber(os.getenv("BENCH_DISTINCT") or "") or 20000
local chrome_ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
local ff_ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
local safari_ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"

local function build(i)
  local item = math.random(1, 1000)
  local api = math.random() < 0.7
  local path = api and ("/api/items/" .. item) or ("/item/" .. item)
  local accept = api and "application/json" or "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
  local n = math.random(1, 10000)
  local cookie = "member=m" .. n .. "; device=d" .. n
  local ip = "10." .. math.random(0, 19) .. "." .. math.random(0, 15) .. "." .. math.random(1, 16)
  local b = math.random()
  local h
  if b < 0.65 then
    h = "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n" ..
        "sec-ch-ua-mobile: ?0\r\nsec-ch-ua-platform: \"Windows\"\r\nUpgrade-Insecure-Requests: 1\r\n" ..
        "User-Agent: " .. chrome_ua .. "\r\nAccept: " .. accept .. "\r\nSec-Fetch-Site: same-origin\r\n" ..
        "Sec-Fetch-Mode: " .. (api and "cors" or "navigate") .. "\r\nSec-Fetch-Dest: " .. (api and "empty" or "document") ..
        "\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-GB,en;q=0.9\r\n"
  elseif b < 0.85 then
    h = "User-Agent: " .. ff_ua .. "\r\nAccept: " .. accept .. "\r\nAccept-Language: en-GB,en;q=0.5\r\n" ..
        "Accept-Encoding: gzip, deflate, br\r\nSec-Fetch-Dest: " .. (api and "empty" or "document") ..
        "\r\nSec-Fetch-Mode: " .. (api and "cors" or "navigate") .. "\r\nSec-Fetch-Site: same-origin\r\n"
  else
    h = "Accept: " .. accept .. "\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: " ..
        (api and "cors" or "navigate") .. "\r\nUser-Agent: " .. safari_ua .. "\r\nSec-Fetch-Dest: " ..
        (api and "empty" or "document") .. "\r\nAccept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
  end
  return "GET " .. path .. " HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n" .. h ..
         "Cookie: " .. cookie .. "\r\nX-Forwarded-For: " .. ip .. "\r\n\r\n"
end

local reqs = {}
local idx = 0
function init(args)
  math.randomseed(42)
  for i = 1, distinct do reqs[i] = build(i) end
end

function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end

-- BENCH_THINK_MS=N: each connection waits N ms after an answer before its next request, so both
-- proxies see about the same offered load below saturation (connections / (N ms + round trip))
-- instead of as much as each can take.
local think = tonumber(os.getenv("BENCH_THINK_MS") or "")
if think then
  function delay() return think end
end
