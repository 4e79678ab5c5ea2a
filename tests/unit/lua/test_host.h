#pragma once
// Test doubles for the Lua library's host interface: a RequestHost answering sub-requests from
// canned data (at once, or when the test says so), and a WorkerHost on a ManualClock.
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/clock.h"
#include "lua/host.h"
#include "lua/request.h"
#include "lua/validator.h"
#include "lua/vm.h"

namespace sluice::lua::test {

class TestWorkerHost : public WorkerHost {
 public:
  Nanos now() const override { return clock.now(); }
  OperationId startTimer(Nanos delay, TimerCallback fn) override {
    OperationId id = next_++;
    timers_[id] = {clock.now() + delay, std::move(fn)};
    return id;
  }
  void cancelTimer(OperationId id) override {
    cancelled.push_back(id);
    timers_.erase(id);
  }
  void log(LogLevel level, std::string_view message) override {
    logs.push_back(std::string(message));
  }
  // Moves the clock and fires what is due, in due order.
  void advance(Nanos d) {
    Nanos target = clock.now() + d;
    while (true) {
      auto best = timers_.end();
      for (auto it = timers_.begin(); it != timers_.end(); ++it)
        if (it->second.first <= target && (best == timers_.end() || it->second.first < best->second.first))
          best = it;
      if (best == timers_.end()) break;
      if (best->second.first > clock.now()) clock.set(best->second.first);
      auto fn = std::move(best->second.second);
      timers_.erase(best);
      fn();
    }
    clock.set(target);
  }
  size_t pending() const { return timers_.size(); }

  ManualClock clock{1000 * kSeconds};
  std::vector<std::string> logs;
  std::vector<OperationId> cancelled;

 private:
  OperationId next_ = 1;
  std::map<OperationId, std::pair<Nanos, TimerCallback>> timers_;
};

class TestRequestHost : public RequestHost {
 public:
  enum class Mode { kImmediate, kDeferred };

  std::string_view method() const override { return method_; }
  std::string_view path() const override { return path_; }
  std::string_view query() const override { return query_; }
  size_t headerCount() const override { return headers.size(); }
  std::string_view headerName(size_t i) const override { return headers[i].name; }
  std::string_view headerValue(size_t i) const override { return headers[i].value; }
  bool body(std::string_view* out) const override {
    if (!body_) return false;
    *out = *body_;
    return true;
  }
  std::string_view var(RequestVar v) const override {
    auto f = vars.find(v);
    return f == vars.end() ? std::string_view() : std::string_view(f->second);
  }
  void setRequestHeader(std::string_view name, std::string_view value, bool remove) override {
    request_header_ops.push_back(std::string(name) + (remove ? "" : "=" + std::string(value)));
  }
  void respond(int status, std::span<const HeaderView> hs, std::string_view b) override {
    responses++;
    resp_status = status;
    resp_headers.clear();
    for (const HeaderView& h : hs) resp_headers.push_back(Header{std::string(h.name), std::string(h.value)});
    resp_body = std::string(b);
  }
  void setResponseHeader(std::string_view name, std::string_view value, bool remove) override {
    response_header_ops.push_back(std::string(name) + (remove ? "" : "=" + std::string(value)));
  }
  int responseStatus() const override { return resp_status; }
  void setResponseStatus(int s) override { resp_status = s; }
  size_t responseHeaderCount() const override { return response_headers.size(); }
  std::string_view responseHeaderName(size_t i) const override { return response_headers[i].name; }
  std::string_view responseHeaderValue(size_t i) const override { return response_headers[i].value; }
  LimitTakeResult limitTake(std::string_view key, uint32_t cost) override {
    takes.push_back(std::string(key) + ":" + std::to_string(cost));
    auto f = limits.find(std::string(key));
    if (f == limits.end()) return LimitTakeResult{false};
    return f->second;
  }
  bool setLimitKey(std::string_view name, std::string_view value) override {
    if (limit_keys.size() >= 3 && !limit_keys.count(std::string(name))) return false;
    limit_keys[std::string(name)] = std::string(value);
    return true;
  }
  std::map<std::string, std::string> limit_keys;
  bool riskAdd(std::string_view signal, int points) override {
    if (risk.size() >= 4 && !risk.count(std::string(signal))) return false;
    risk[std::string(signal)] += points;
    score += points;
    return true;
  }
  int riskScore() override { return score; }

  OperationId startSubrequest(const SubrequestSpec& spec, SubrequestCompletion& done,
                              uint64_t cookie) override {
    OperationId id = next_++;
    started.push_back(StartedSpec::of(spec));  // the spec's views last only for this call
    SubrequestResult r;
    const std::string key = std::string(spec.pool) + std::string(spec.path);
    auto f = canned.find(key);
    if (f == canned.end()) {
      r.ok = false;
      r.error = "no such pool";
    } else {
      r = f->second;
    }
    if (mode == Mode::kImmediate && f != canned.end() && !deferred_keys.count(key)) {
      done.onSubrequestDone(cookie, std::move(r));
    } else {
      waiting[id] = Waiting{&done, cookie, std::move(r)};
    }
    return id;
  }
  void cancelSubrequest(OperationId id) override {
    cancelled.push_back(id);
    waiting.erase(id);
  }
  void scheduleResume() override { resumes_scheduled++; }

  // Completes every deferred sub-request (in id order).
  void completeAll() {
    auto w = std::move(waiting);
    waiting.clear();
    for (auto& [id, p] : w) p.fire();
  }
  void complete(OperationId id) {
    auto f = waiting.find(id);
    if (f == waiting.end()) return;
    auto p = std::move(f->second);
    waiting.erase(f);
    p.fire();
  }

  static SubrequestResult ok(int status, std::string body) {
    SubrequestResult r;
    r.ok = true;
    r.status = status;
    r.body = std::move(body);
    r.headers.push_back({"Content-Type", "application/json"});
    return r;
  }
  static SubrequestResult err(std::string e) {
    SubrequestResult r;
    r.ok = false;
    r.error = std::move(e);
    return r;
  }

  std::string method_ = "GET";
  std::string path_ = "/";
  std::string query_;
  HeaderList headers;
  std::optional<std::string> body_;
  std::map<RequestVar, std::string> vars{{RequestVar::kRequestId, "req-1"},
                                         {RequestVar::kClientIp, "192.0.2.7"},
                                         {RequestVar::kRoute, "r1"}};
  std::map<std::string, LimitTakeResult> limits;
  std::map<std::string, int> risk;
  int score = 0;
  std::vector<std::string> takes;
  std::vector<std::string> request_header_ops, response_header_ops;
  HeaderList response_headers;  // what resp.get_headers() sees
  int responses = 0;
  int resp_status = 0;
  HeaderList resp_headers;
  std::string resp_body;

  Mode mode = Mode::kImmediate;
  std::map<std::string, SubrequestResult> canned;  // pool + path -> result
  std::set<std::string> deferred_keys;              // answered only by complete()
  // A started sub-request's spec, copied out of the views it came in.
  struct StartedSpec {
    std::string pool, method, path, body;
    HeaderList headers;
    Nanos timeout = 0;
    size_t max_body = 0;
    static StartedSpec of(const SubrequestSpec& s) {
      StartedSpec c{std::string(s.pool), std::string(s.method), std::string(s.path),
                    std::string(s.body), {}, s.timeout, s.max_body};
      for (const HeaderView& h : s.headers)
        c.headers.push_back(Header{std::string(h.name), std::string(h.value)});
      return c;
    }
  };
  struct Waiting {
    SubrequestCompletion* done = nullptr;
    uint64_t cookie = 0;
    SubrequestResult result;
    void fire() { done->onSubrequestDone(cookie, std::move(result)); }
  };
  std::vector<StartedSpec> started;
  std::vector<OperationId> cancelled;
  std::map<OperationId, Waiting> waiting;
  int resumes_scheduled = 0;

 private:
  OperationId next_ = 1;
};

// A bundle from (file, source) pairs with one route "r1" attaching `attach` (policy, config).
inline PolicyBundlePtr makeBundle(
    const std::vector<std::pair<std::string, std::string>>& files,
    const std::vector<std::pair<std::string, std::string>>& attach = {},
    const std::string& route = "r1") {
  auto b = std::make_shared<PolicyBundle>();
  for (const auto& [name, src] : files) b->addFile(name, src);
  for (const auto& [policy, conf] : attach)
    b->attach(route, PolicyAttachment{policy, conf, "sluice.yaml:10"});
  return b;
}

struct Fixture {
  TestWorkerHost worker;
  SharedDictsPtr dicts = std::make_shared<SharedDicts>(worker.clock);
  std::vector<std::string> errors;
  WorkerVmPtr vm;

  WorkerVmPtr build(const std::vector<std::pair<std::string, std::string>>& files,
                    const std::vector<std::pair<std::string, std::string>>& attach,
                    VmOptions opts = {}) {
    errors.clear();
    vm = WorkerVm::prepare(makeBundle(files, attach), opts, &worker, dicts, &errors);
    if (vm) vm->commit();
    return vm;
  }
  std::string errorText() const {
    std::string s;
    for (const auto& e : errors) s += e + "\n";
    return s;
  }
};

// One policy "p" (file p.lua) with the given phase body; `phase` names the handler.
inline std::string policy(const std::string& phase, const std::string& body,
                          const std::string& name = "p", int priority = 0) {
  return "return { name = '" + name + "', priority = " + std::to_string(priority) +
         ", phases = { " + phase + " = function(conf, ctx)\n" + body + "\nend } }";
}

}  // namespace sluice::lua::test
