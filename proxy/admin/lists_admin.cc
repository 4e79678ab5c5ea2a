#include "proxy/admin/lists_admin.h"

#include <cstdio>

#include "core/clock.h"
#include "core/jwt.h"
#include "core/log.h"
#include "core/strings.h"
#include "proxy/cluster/risk_sync.h"
#include "proxy/config/config.h"
#include "proxy/config/risk_settings.h"
#include "proxy/server/risk_phase.h"
#include "proxy/upstream/balance_key.h"
#include "risk/list_overlay.h"
#include "risk/risk_config.h"

namespace sluice {

namespace {

// Bounds on what one call and one list may hold at run time: the overlay is memory the operator
// does not see in a file, so it must not grow without limit (a script looping on POST).
constexpr size_t kMaxEntriesPerCall = 10000;
constexpr size_t kMaxRuntimeEntriesPerList = 100000;

std::pair<int, std::string> error(int status, const std::string& message) {
  return {status, "{\"error\":\"" + jsonEscape(message) + "\"}"};
}

const risk::ListSource* findSource(const Config& cfg, std::string_view name, size_t* index) {
  const auto& sources = cfg.risk->policy->config.lists;
  for (size_t i = 0; i < sources.size(); i++)
    if (sources[i].name == name) {
      *index = i;
      return &sources[i];
    }
  return nullptr;
}

// Whether `value` is listed by list `index`, from its file alone and with the run-time entries.
void matchValue(const Config& cfg, size_t index, risk::ListKind kind, const std::string& value,
                int64_t now_ms, bool* in_file, bool* listed) {
  const risk::ScalperLists& lists = *cfg.risk->policy->lists;
  risk::ListQuery q;
  IpAddress ip;
  switch (kind) {
    case risk::ListKind::kIp:
      if (IpAddress::parse(value, &ip)) q.ip = &ip;
      break;
    case risk::ListKind::kMember: q.memberId = value; break;
    case risk::ListKind::kDevice: q.deviceId = value; break;
    case risk::ListKind::kAddress: q.addressHash = value; break;
    case risk::ListKind::kFingerprint: q.fingerprint = value; break;
    case risk::ListKind::kTls: q.tlsFingerprint = value; break;
  }
  const uint64_t bit = index < 64 ? uint64_t{1} << index : 0;
  *in_file = (lists.match(q).matchedLists & bit) != 0;
  *listed = (lists.match(q, RiskPhase::listOverlay(cfg)->current(now_ms)).matchedLists & bit) != 0;
}

// The entries of a POST / DELETE body ("entries": [...] or "entry": "x") or ?entry=.
bool readEntries(std::string_view body, std::string_view query, std::vector<std::string>* out,
                 std::string* err) {
  std::string_view v;
  if (findQueryArg(query, "entry", &v)) {
    out->push_back(percentDecode(v));
    return true;
  }
  std::string one;
  if (jsonStringArrayMember(body, "entries", out)) {
    if (out->empty()) {
      *err = "\"entries\" is empty";
      return false;
    }
    return true;
  }
  if (jsonMember(body, "entry", &one)) {
    out->push_back(one);
    return true;
  }
  *err = "expected {\"entries\": [\"...\"], \"ttl\": \"30m\"} or {\"entry\": \"...\"}";
  return false;
}

std::string listJson(const Config& cfg, size_t i, int64_t now_ms) {
  const risk::ListSource& src = cfg.risk->policy->config.lists[i];
  const auto& loaded = cfg.risk->policy->lists->lists();
  const size_t file_entries = i < loaded.size() ? loaded[i].entries : 0;
  return "{\"name\":\"" + jsonEscape(src.name) + "\",\"kind\":\"" + risk::listKindName(src.kind) +
         "\",\"allow\":" + (src.allow ? "true" : "false") +
         ",\"points\":" + std::to_string(src.points) + ",\"file\":\"" + jsonEscape(src.file) +
         "\",\"file_entries\":" + std::to_string(file_entries) + ",\"runtime_entries\":" +
         std::to_string(RiskPhase::listOverlay(cfg)->count(src.name, now_ms));
}

}  // namespace

std::pair<int, std::string> listsAdmin(const Config& cfg, std::string_view method,
                                       std::string_view rest, std::string_view query,
                                       std::string_view body) {
  if (!cfg.risk) {
    // The dashboard polls GET /lists: without a risk section that is an empty answer, not a 404.
    if (method == "GET" && (rest.empty() || rest == "/"))
      return {200, "{\"lists\":[],\"risk\":false,\"cluster_sync\":" + RiskSync::statusJson() + "}"};
    return error(404, "risk is not enabled, so there are no lists");
  }
  risk::ListOverlay& overlay = *RiskPhase::listOverlay(cfg);
  const int64_t now_ms = wallMicros() / 1000;
  const auto& sources = cfg.risk->policy->config.lists;

  if (rest.empty() || rest == "/") {
    if (method != "GET") return error(405, "use GET /lists, or /lists/{name} to change a list");
    std::string out = "{\"lists\":[";
    for (size_t i = 0; i < sources.size(); i++) out += (i ? "," : "") + listJson(cfg, i, now_ms) + "}";
    out += "],\"cluster_sync\":" + RiskSync::statusJson() + "}";
    return {200, out};
  }
  std::string_view name = rest.substr(1);
  size_t index = 0;
  const risk::ListSource* src = findSource(cfg, name, &index);
  if (!src) return error(404, "no list '" + std::string(name) + "' in risk.lists");
  const std::string list(name);

  if (method == "GET") {
    std::string_view v;
    if (findQueryArg(query, "match", &v)) {
      const std::string value = percentDecode(v);
      bool in_file = false, listed = false;
      matchValue(cfg, index, src->kind, value, now_ms, &in_file, &listed);
      return {200, "{\"list\":\"" + jsonEscape(list) + "\",\"value\":\"" + jsonEscape(value) +
                       "\",\"listed\":" + (listed ? "true" : "false") +
                       ",\"in_file\":" + (in_file ? "true" : "false") +
                       ",\"runtime\":" + (listed && !in_file ? "true" : "false") + "}"};
    }
    std::string out = listJson(cfg, index, now_ms) + ",\"entries\":[";
    const auto entries = overlay.entries(list, now_ms);
    for (size_t i = 0; i < entries.size(); i++) {
      const auto& e = entries[i];
      out += std::string(i ? "," : "") + "{\"entry\":\"" + jsonEscape(e.parsed.canonical) +
             "\",\"added_unix\":" + std::to_string(e.addedAtMs / 1000) + ",\"expires_in_s\":" +
             (e.expiresAtMs ? std::to_string((e.expiresAtMs - now_ms + 999) / 1000) : "null") + "}";
    }
    return {200, out + "]}"};
  }

  std::vector<std::string> raw;
  std::string err;
  if (method != "POST" && method != "DELETE") return error(405, "use GET, POST or DELETE on /lists/{name}");
  if (!readEntries(body, query, &raw, &err)) return error(400, err);
  if (raw.size() > kMaxEntriesPerCall)
    return error(400, "at most " + std::to_string(kMaxEntriesPerCall) + " entries per call");
  // Validate everything before changing anything.
  std::vector<risk::ListEntry> parsed(raw.size());
  for (size_t i = 0; i < raw.size(); i++) {
    std::string message;
    if (!risk::parseListEntry(src->kind, trim(raw[i]), &parsed[i], &message))
      return error(400, "entries[" + std::to_string(i) + "]: " + message);
  }

  if (method == "POST") {
    int64_t expires_ms = 0;
    std::string ttl;
    if (jsonMember(body, "ttl", &ttl) && ttl != "null") {
      int64_t ns = 0;
      bool digits = !ttl.empty() && ttl.find_first_not_of("0123456789") == std::string::npos;
      if (digits && ttl.size() < 10) ns = std::stoll(ttl) * kSeconds;
      else if (!parseDurationNanos(ttl, &ns)) ns = -1;
      if (ns <= 0) return error(400, "ttl: expected a duration (\"30m\", \"2h\") or seconds (> 0)");
      expires_ms = now_ms + ns / kMillis;
    }
    if (overlay.count(list, now_ms) + parsed.size() > kMaxRuntimeEntriesPerList)
      return error(400, "list '" + list + "' would hold more than " +
                            std::to_string(kMaxRuntimeEntriesPerList) +
                            " run-time entries; put long-lived entries in its file");
    const size_t added = overlay.add(list, src->kind, parsed, expires_ms, now_ms);
    RiskSync::publishAdd(cfg, list, src->kind, parsed, expires_ms);
    LOG_WARN("admin: list %s: %zu entries added (%zu new)%s", list.c_str(), parsed.size(), added,
             expires_ms ? ", with an expiry" : "");
    return {200, "{\"list\":\"" + jsonEscape(list) + "\",\"added\":" + std::to_string(added) +
                     ",\"entries\":" + std::to_string(overlay.count(list, now_ms)) +
                     ",\"expires_in_s\":" +
                     (expires_ms ? std::to_string((expires_ms - now_ms + 999) / 1000) : "null") + "}"};
  }

  // DELETE: only run-time entries can go; a file's entries are the file's business.
  std::vector<std::string> canonical;
  std::vector<std::string> file_only;
  for (const auto& e : parsed) {
    if (overlay.contains(list, e.canonical, now_ms)) {
      canonical.push_back(e.canonical);
    } else {
      bool in_file = false, listed = false;
      if (!e.isCidr || e.cidr.prefix == 128) {
        matchValue(cfg, index, src->kind, e.canonical, now_ms, &in_file, &listed);
        if (in_file) file_only.push_back(e.canonical);
      }
    }
  }
  const size_t removed = overlay.remove(list, canonical);
  if (removed) RiskSync::publishRemove(cfg, list, canonical);
  if (removed == 0 && !file_only.empty())
    return error(409, "'" + file_only[0] + "' is listed by the file " + src->file +
                          ", not at run time: edit the file and reload");
  if (removed == 0) return error(404, "none of the entries is in list '" + list + "'");
  LOG_WARN("admin: list %s: %zu entries removed", list.c_str(), removed);
  return {200, "{\"list\":\"" + jsonEscape(list) + "\",\"removed\":" + std::to_string(removed) +
                   ",\"entries\":" + std::to_string(overlay.count(list, now_ms)) + "}"};
}

}  // namespace sluice
