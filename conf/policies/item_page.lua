-- Edge aggregation: GET /api/items/{id}/page answered from three backend calls made in
-- parallel (item, price, stock) and merged into one JSON document.
--  * a required part that fails (status >= 400, timeout, bad JSON) -> 502 with the request id;
--  * an optional part that fails -> null in the document, "partial": true and its name in
--    "missing", so the page still renders.
local json = sluice.json

local PARTS = {
  { name = "item",  pool_field = "items_pool",  suffix = "" },
  { name = "price", pool_field = "prices_pool", suffix = "/price" },
  { name = "stock", pool_field = "stock_pool",  suffix = "/stock" },
}

local function fail(status, message)
  sluice.resp.exit(status, json.encode({ error = message, request_id = sluice.var.request_id }),
                   { ["Content-Type"] = "application/json" })
end

return {
  name = "item_page",
  version = "1.0.0",
  priority = 500,
  schema = {
    items_pool = { type = "string", default = "items" },
    prices_pool = { type = "string", default = "prices" },
    stock_pool = { type = "string", default = "stock" },
    timeout_ms = { type = "integer", default = 300, min = 1, max = 10000 },
    total_timeout_ms = { type = "integer", default = 800, min = 1, max = 30000 },
    optional = { type = "array", items = { type = "string", enum = { "item", "price", "stock" } },
                 default = { "price", "stock" } },
  },

  configure = function(conf)
    -- Precompute the optional set once per generation instead of per request.
    conf.optional_set = {}
    for _, name in ipairs(conf.optional) do conf.optional_set[name] = true end
    return conf
  end,

  phases = {
    aggregate = function(conf, ctx)
      if sluice.req.get_method() ~= "GET" then
        return fail(405, "method not allowed")
      end
      local id = sluice.req.get_path():match("^/api/items/([%w%-_]+)/page$")
      if not id then
        return fail(404, "not found")
      end
      local calls = {}
      for i, part in ipairs(PARTS) do
        calls[i] = {
          pool = conf[part.pool_field],
          path = "/api/items/" .. id .. part.suffix,
          headers = { ["X-Request-Id"] = sluice.var.request_id },
          timeout = conf.timeout_ms,
        }
      end
      local results = sluice.http.multi(calls, { total_timeout = conf.total_timeout_ms })

      local doc = { id = id, partial = false }
      local missing = {}
      for i, part in ipairs(PARTS) do
        local res = results[i]
        local value, why
        if res.err then
          why = res.err
        elseif res.status >= 400 then
          why = "status " .. res.status
        else
          value, why = json.decode(res.body)
        end
        if value == nil then
          if not conf.optional_set[part.name] then
            sluice.log(sluice.WARN, "item_page: required part '", part.name, "' failed: ", why)
            return fail(502, "upstream part '" .. part.name .. "' unavailable")
          end
          doc[part.name] = json.null
          missing[#missing + 1] = part.name
          doc.partial = true
        else
          doc[part.name] = value
        end
      end
      doc.missing = json.array(missing)
      return sluice.resp.exit(200, json.encode(doc), { ["Content-Type"] = "application/json" })
    end,
  },
}
