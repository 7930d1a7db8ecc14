-- wrk script of bench/api_load.py: GET one item by a random key with a random bearer token.
--
--   wrk -t1 -c32 -d10s -s bench/api_wrk.lua http://127.0.0.1:PORT -- \
--       PATH_TEMPLATE TOKENS_FILE KEY_COUNT SEED
--
-- PATH_TEMPLATE holds one "%s" where the key goes (e.g. /v1/namespaces/bench/items/%s);
-- keys are "item-%07d" for 0 <= n < KEY_COUNT, as bench/refresh.py's make_items names them.
-- TOKENS_FILE holds one token a line; every request carries one of them, chosen at random,
-- whatever the target (so every target parses the same request bytes).
--
-- done() prints one line, "BENCH_JSON {...}", with wrk's own summary: requests, duration,
-- bytes, errors (connect/read/write/timeout, and status: responses with a status >= 400)
-- and latency percentiles in microseconds. Counting errors there keeps the per-response
-- path of the load generator free of Lua (a response() hook would make wrk hand every
-- body to Lua).

local path_template
local key_count
local tokens = {}

function init(args)
   path_template = args[1]
   local tokens_file = args[2]
   key_count = tonumber(args[3])
   local seed = tonumber(args[4]) or 1
   if path_template == nil or tokens_file == nil or key_count == nil then
      error("usage: -- PATH_TEMPLATE TOKENS_FILE KEY_COUNT [SEED]")
   end
   for line in io.lines(tokens_file) do
      if #line > 0 then
         tokens[#tokens + 1] = line
      end
   end
   if #tokens == 0 then
      error("no tokens in " .. tokens_file)
   end
   math.randomseed(seed)
end

function request()
   local key = string.format("item-%07d", math.random(0, key_count - 1))
   local token = tokens[math.random(1, #tokens)]
   return wrk.format("GET", string.format(path_template, key), {
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/json",
   })
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean
   ))
end
