// The `lua:` section and the routes' `policies:` / `aggregate:` keys (docs/configuration.md).
// Validation runs here, at config load, so `sluice -t`, SIGHUP and POST /reload all refuse a
// broken policy before any worker sees it: every file is compiled in a scratch VM with the
// workers' sandbox, module top levels run, each attachment's config is checked against its
// policy's schema. Lua errors join the YAML errors as `file:line: message`.
#include <charconv>
#include <cstdio>

#include "core/hash.h"
#include "proxy/config/loader.h"
#include "proxy/config/lua_config.h"

namespace sluice::config_detail {

namespace {

void appendJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out->append(buf);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

// YAML -> JSON text for a policy's config. Plain scalars that read as numbers, booleans or null
// become those; quoted scalars always stay strings ("123" is a string, 123 a number).
bool yamlToJson(const YAML::Node& n, std::string* out, std::string* err) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out->append("null");
      return true;
    case YAML::NodeType::Sequence: {
      out->push_back('[');
      bool first = true;
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (!first) out->push_back(',');
        first = false;
        if (!yamlToJson(*it, out, err)) return false;
      }
      out->push_back(']');
      return true;
    }
    case YAML::NodeType::Map: {
      out->push_back('{');
      bool first = true;
      for (auto it = n.begin(); it != n.end(); ++it) {
        YAML::Node k = it->first;
        if (!k.IsScalar()) {
          *err = "config keys must be plain names";
          return false;
        }
        if (!first) out->push_back(',');
        first = false;
        appendJsonString(k.Scalar(), out);
        out->push_back(':');
        if (!yamlToJson(it->second, out, err)) return false;
      }
      out->push_back('}');
      return true;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = n.Scalar();
      if (n.Tag() != "!") {  // plain (unquoted)
        if (s == "true" || s == "false") {
          out->append(s);
          return true;
        }
        if (s == "null" || s == "~") {
          out->append("null");
          return true;
        }
        double d = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
        if (!s.empty() && ec == std::errc() && p == s.data() + s.size() && s[0] != '+' &&
            s.find_first_of("xXnN") == std::string::npos) {
          char buf[40];
          if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -9.0e15 && d < 9.0e15)
            snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(d));
          else
            snprintf(buf, sizeof(buf), "%.17g", d);
          out->append(buf);
          return true;
        }
      }
      appendJsonString(s, out);
      return true;
    }
  }
  return true;
}

}  // namespace

void Loader::loadRouteLua(const Mapping& m, const std::string& path, RouteConfig& r) {
  std::vector<std::string> attached;
  if (auto v = m.get("policies")) {
    std::vector<Node> items;
    if (sequence(*v, m.child("policies"), &items)) {
      for (size_t i = 0; i < items.size(); i++) {
        std::string p = m.child("policies") + "[" + std::to_string(i) + "]";
        LuaRouteAttachment a;
        a.route = r.name;
        a.mark = items[i].Mark();
        if (items[i].IsScalar()) {
          if (!readString(items[i], p, &a.policy)) continue;
        } else {
          Mapping pm = mapping(items[i], p, {"name", "config"});
          if (!pm.valid) continue;
          if (auto nv = pm.get("name")) {
            if (!readString(*nv, pm.child("name"), &a.policy)) continue;
          } else {
            fail(items[i], p + ": missing required key 'name'");
            continue;
          }
          if (auto cv = pm.get("config")) {
            if (!cv->IsMap() && !cv->IsNull()) {
              fail(*cv, pm.child("config") + ": expected a mapping, got " + describe(*cv));
              continue;
            }
            std::string err;
            if (!cv->IsNull() && !yamlToJson(*cv, &a.config_json, &err)) {
              fail(*cv, pm.child("config") + ": " + err);
              continue;
            }
          }
        }
        if (std::find(attached.begin(), attached.end(), a.policy) != attached.end()) {
          fail(items[i], p + ": policy '" + a.policy + "' attached twice");
          continue;
        }
        attached.push_back(a.policy);
        lua_attachments_.push_back(std::move(a));
      }
    }
  }
  if (auto v = m.get("aggregate")) {
    std::string s;
    if (!scalar(*v, m.child("aggregate"), "true, false or a policy name", &s)) return;
    if (s == "false") return;
    if (s != "true" && std::find(attached.begin(), attached.end(), s) == attached.end()) {
      // `aggregate: item_page` attaches the policy (with its schema's defaults) when the route
      // does not list it under `policies:` already.
      LuaRouteAttachment a;
      a.route = r.name;
      a.policy = s;
      a.mark = v->Mark();
      lua_attachments_.push_back(std::move(a));
    }
    lua_aggregate_routes_.emplace_back(r.name, v->Mark());
  }
  (void)path;
}

void Loader::loadLua(const std::optional<Node>& n, Config& cfg) {
  if (!n && lua_attachments_.empty() && lua_aggregate_routes_.empty()) return;
  auto s = std::make_shared<LuaSettings>();
  s->policies_dir = "conf/policies";
  YAML::Mark dir_mark = YAML::Mark::null_mark();
  if (n) {
    Mapping m = mapping(*n, "lua",
                        {"policies_dir", "memory", "time_budget", "jit", "max_fanout",
                         "max_subrequests", "max_subrequest_body", "subrequest_timeout",
                         "overruns_to_disable", "max_timers", "shared_dicts", "max_generations",
                         "retire_timeout", "prepare_timeout"});
    if (!m.valid) return;
    if (auto v = m.get("policies_dir")) {
      readString(*v, m.child("policies_dir"), &s->policies_dir);
      dir_mark = v->Mark();
    }
    uint64_t size = 0;
    if (auto v = m.get("memory"); v && readSize(*v, m.child("memory"), &size, 1 << 20))
      s->vm.memory_limit = size;
    if (auto v = m.get("time_budget")) readDuration(*v, m.child("time_budget"), &s->vm.budget);
    if (auto v = m.get("jit")) readBool(*v, m.child("jit"), &s->vm.jit);
    if (auto v = m.get("max_fanout")) readInt(*v, m.child("max_fanout"), 1, 256, &s->vm.max_fanout);
    if (auto v = m.get("max_subrequests"))
      readInt(*v, m.child("max_subrequests"), 1, 4096, &s->vm.max_subrequests);
    if (auto v = m.get("max_subrequest_body");
        v && readSize(*v, m.child("max_subrequest_body"), &size, 1))
      s->vm.max_subrequest_body = size;
    if (auto v = m.get("subrequest_timeout"))
      readDuration(*v, m.child("subrequest_timeout"), &s->vm.default_subrequest_timeout);
    if (auto v = m.get("overruns_to_disable"))
      readInt(*v, m.child("overruns_to_disable"), 1, 1000000, &s->vm.overruns_to_disable);
    if (auto v = m.get("max_timers")) readInt(*v, m.child("max_timers"), 0, 1000000, &s->vm.max_timers);
    if (auto v = m.get("max_generations"))
      readInt(*v, m.child("max_generations"), 2, 64, &s->max_generations);
    if (auto v = m.get("retire_timeout")) readDuration(*v, m.child("retire_timeout"), &s->retire_timeout);
    if (auto v = m.get("prepare_timeout")) readDuration(*v, m.child("prepare_timeout"), &s->prepare_timeout);
    if (auto v = m.get("shared_dicts")) {
      Mapping d{*v, m.child("shared_dicts"), v->IsMap() || v->IsNull()};
      if (!d.valid) fail(*v, d.path + ": expected a mapping of name: size, got " + describe(*v));
      else if (v->IsMap())
        for (auto it = v->begin(); it != v->end(); ++it) {
          Node k = it->first;
          LuaSharedDictConfig dc;
          if (!k.IsScalar() || !isName(k.Scalar())) {
            fail(k, d.path + ": dictionary names are letters, digits, '_', '-' and '.'");
            continue;
          }
          dc.name = k.Scalar();
          if (readSize(it->second, d.child(dc.name), &dc.size, 4096)) s->shared_dicts.push_back(dc);
        }
    }
  }

  auto bundle = std::make_shared<lua::PolicyBundle>();
  std::string err;
  if (!lua::loadPolicyDirectory(s->policies_dir, bundle.get(), &err)) {
    fail(dir_mark, "lua.policies_dir: " + err);
    return;
  }
  for (const auto& a : lua_attachments_) {
    lua::PolicyAttachment pa;
    pa.policy = a.policy;
    pa.config_json = a.config_json;
    pa.where = file_ + ":" + std::to_string(a.mark.line + 1) + ":" + std::to_string(a.mark.column + 1);
    bundle->attach(a.route, std::move(pa));
  }

  // The same build a worker runs, in a scratch VM: compile, top levels, shapes, schemas,
  // configure(). init_worker is left to the workers (it may arm timers, write dicts).
  std::vector<std::string> errors;
  lua::WorkerVmPtr vm = lua::WorkerVm::prepare(bundle, s->vm, nullptr, nullptr, &errors,
                                               lua::WorkerVm::Mode::kValidate);
  std::string dir = s->policies_dir;
  if (!dir.empty() && dir.back() == '/') dir.pop_back();
  for (const auto& e : errors) {
    // "item_page.lua:12: msg" -> "conf/policies/item_page.lua:12: msg"; attachment errors
    // already start with this file's "sluice.yaml:42:5".
    ConfigError ce;
    size_t colon = e.find(": ");
    std::string where = colon == std::string::npos ? std::string() : e.substr(0, colon);
    bool in_bundle = false;
    for (const auto& [name, f] : bundle->files())
      if (where.compare(0, name.size(), name) == 0 &&
          (where.size() == name.size() || where[name.size()] == ':'))
        in_bundle = true;
    if (in_bundle) {
      ce.file = dir + "/" + where;
      ce.message = e.substr(colon + 2);
    } else if (!where.empty() && where.compare(0, file_.size(), file_) == 0) {
      ce.file = where;
      ce.message = e.substr(colon + 2);
    } else {
      ce.file = dir;
      ce.message = e;
    }
    errors_.push_back(std::move(ce));
  }
  if (!vm) {
    if (errors.empty()) fail(dir_mark, "lua: the policies could not be loaded");
    return;
  }
  for (const auto& [route, mark] : lua_aggregate_routes_) {
    if (!vm->routeHasPhase(route, lua::Phase::kAggregate)) {
      fail(mark, "route '" + route + "': aggregate, but none of its policies has an aggregate phase");
      continue;
    }
    s->aggregate_routes.push_back(route);
  }
  s->policies = vm->policies();
  s->bundle_hash = bundle->hash();
  uint64_t h = s->bundle_hash;
  const auto& o = s->vm;
  uint64_t nums[] = {o.memory_limit, static_cast<uint64_t>(o.budget), o.jit ? 1u : 0u, o.max_fanout,
                     o.max_subrequests, o.max_subrequest_body,
                     static_cast<uint64_t>(o.default_subrequest_timeout),
                     static_cast<uint64_t>(o.overruns_to_disable), o.max_timers};
  for (uint64_t x : nums) h = hash64(std::string_view(reinterpret_cast<const char*>(&x), sizeof(x)), h);
  for (const auto& d : s->shared_dicts) h = hash64(d.name + "=" + std::to_string(d.size), h);
  for (const auto& r : s->aggregate_routes) h = hash64(r, h);
  s->hash = h;
  s->bundle = std::move(bundle);
  cfg.lua = std::move(s);
}

}  // namespace sluice::config_detail
