#include "proxy/cluster/risk_sync.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <unistd.h>

#include <cstdio>
#include <deque>
#include <memory>
#include <unordered_map>

#include "core/clock.h"
#include "core/log.h"
#include "core/redis/libuv_adapter.h"
#include "core/strings.h"
#include "proxy/cluster/redis_options.h"
#include "proxy/config/config.h"
#include "proxy/config/redis_settings.h"
#include "proxy/config/risk_settings.h"
#include "proxy/server/risk_phase.h"
#include "risk/list_overlay.h"
#include "risk/risk_engine.h"
#include "risk/risk_config.h"

namespace sluice {

namespace {

constexpr size_t kMaxPendingWrites = 10000;
constexpr Nanos kResubscribeDelay = 1 * kSeconds;

int64_t nowMs() { return wallMicros() / 1000; }

std::vector<std::string_view> splitTabs(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t tab = s.find('\t', start);
    out.push_back(s.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
    if (tab == std::string_view::npos) return out;
    start = tab + 1;
  }
}

struct Stats {
  bool subscribed = false;
  uint64_t messages = 0;       // messages received on the channel
  uint64_t bad_messages = 0;   // unknown verb, list or entry
  uint64_t resyncs = 0;        // full reads applied
  uint64_t resync_failures = 0;
  uint64_t writes = 0;         // changes written to Redis and published
  uint64_t write_failures = 0; // attempts that failed (the change stays queued)
  int64_t last_resync_unix = 0;
  uint64_t risk_sent = 0;      // entity updates published
  uint64_t risk_dropped = 0;   // entity updates whose PUBLISH failed (not retried)
  uint64_t risk_applied = 0;   // peers' entity updates merged here
};

// One list's name and kind as the running configuration has it.
struct ListInfo {
  std::string name;
  risk::ListKind kind;
};

class Sync {
 public:
  Sync(uv_loop_t* loop, const RedisSettings& s, std::vector<ListInfo> lists, risk::RiskEngine* engine,
       risk::RiskPolicyPtr policy)
      : loop_(loop), settings_(s), lists_(std::move(lists)), engine_(engine),
        overlay_(&engine->listOverlay()), policy_(std::move(policy)),
        resync_interval_(s.lists_resync_interval) {
    instance_ = randomInstanceId();
    client_ = redis::RedisClient::create(loop_, redisClientOptions(s));
    timer_ = new uv_timer_t;
    uv_timer_init(loop_, timer_);
    timer_->data = this;
    subscribe();
    uv_timer_start(timer_, &Sync::onTimer, static_cast<uint64_t>(resync_interval_ / kMillis),
                   static_cast<uint64_t>(resync_interval_ / kMillis));
    if (settings_.share_risk) {
      share_timer_ = new uv_timer_t;
      uv_timer_init(loop_, share_timer_);
      share_timer_->data = this;
      const uint64_t ms = static_cast<uint64_t>(settings_.share_interval / kMillis);
      uv_timer_start(share_timer_, &Sync::onShareTimer, ms, ms);
      engine_->setSharing(settings_.share_min_score, settings_.expected_instances);
    }
  }

  ~Sync() {
    closing_ = true;
    engine_->setSharing(0);
    if (share_timer_)
      uv_close(reinterpret_cast<uv_handle_t*>(share_timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    if (sub_) redisAsyncFree(sub_);  // its callbacks see closing_ and do not reconnect
    sub_ = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    // The client's pending callbacks fire with kClosed; they only touch `alive_`.
    *alive_ = false;
    client_.reset();
  }

  bool sameAs(const RedisSettings& s) const {
    return s.endpoints == settings_.endpoints && s.cluster == settings_.cluster &&
           s.username == settings_.username && s.password == settings_.password &&
           s.db == settings_.db && s.key_prefix == settings_.key_prefix &&
           s.lists_resync_interval == settings_.lists_resync_interval &&
           s.sync_lists == settings_.sync_lists && s.share_risk == settings_.share_risk &&
           s.share_min_score == settings_.share_min_score && s.share_interval == settings_.share_interval &&
           s.expected_instances == settings_.expected_instances;
  }
  void setLists(std::vector<ListInfo> lists, risk::RiskPolicyPtr policy) {
    lists_ = std::move(lists);
    policy_ = std::move(policy);
  }
  bool listsOn() const { return settings_.sync_lists; }

  void write(std::vector<redis::RedisCommand> cmds) {
    if (pending_.size() >= kMaxPendingWrites) {
      pending_.pop_front();
      LOG_WARN("risk sync: more than %zu changes wait for Redis; the oldest was dropped", kMaxPendingWrites);
    }
    pending_.push_back(std::move(cmds));
    flush();
  }

  std::string keyOf(const std::string& list) const { return settings_.key_prefix + "list:" + list; }
  std::string channel() const { return settings_.key_prefix + "lists"; }
  std::string riskChannel() const { return settings_.key_prefix + "risk"; }
  const Stats& stats() const { return stats_; }
  const std::string& instanceId() const { return instance_; }

 private:
  // Pending writes go one batch at a time, in order, so a del never overtakes its add.
  void flush() {
    if (writing_ || pending_.empty()) return;
    writing_ = true;
    auto alive = alive_;
    client_->batch(pending_.front(), [this, alive](std::vector<redis::RedisResult>& results) {
      if (!*alive) return;
      writing_ = false;
      bool ok = true;
      for (const auto& r : results) ok = ok && r.succeeded();
      if (!ok) {
        stats_.write_failures++;
        if (stats_.write_failures == 1 || stats_.write_failures % 100 == 0)
          LOG_WARN("risk sync: writing a change to Redis failed (%s); kept locally and retried",
                   results.empty() ? "?" : redis::redisStatusName(results[0].status));
        return;  // retried by the timer
      }
      stats_.writes++;
      pending_.pop_front();
      flush();
    });
  }

  static void onTimer(uv_timer_t* t) {
    auto* self = static_cast<Sync*>(t->data);
    self->flush();
    if (!self->sub_ && !self->closing_) self->subscribe();
    self->resync();
  }

  // Full read of every configured list. Entries learned locally after the read was sent stay.
  void resync() {
    if (!settings_.sync_lists || lists_.empty() || resyncing_) return;
    // Our own queued writes go first: a read without them would drop them here until they land.
    if (!pending_.empty()) return flush();
    resyncing_ = true;
    const int64_t sent_ms = nowMs();
    std::vector<redis::RedisCommand> cmds;
    for (const auto& l : lists_) {
      cmds.push_back(redis::RedisCommand::of({"ZREMRANGEBYSCORE", keyOf(l.name), "-inf", std::to_string(sent_ms)}));
      cmds.push_back(redis::RedisCommand::of(
          {"ZRANGEBYSCORE", keyOf(l.name), "(" + std::to_string(sent_ms), "+inf", "WITHSCORES"}));
    }
    auto alive = alive_;
    auto lists = lists_;
    client_->batch(std::move(cmds), [this, alive, lists, sent_ms](std::vector<redis::RedisResult>& results) {
      if (!*alive) return;
      resyncing_ = false;
      for (size_t i = 0; i < lists.size(); i++) {
        const redis::RedisResult& r = results[2 * i + 1];
        if (!r.succeeded() || !r.reply.isArray()) {
          stats_.resync_failures++;
          return;
        }
      }
      const int64_t now = nowMs();
      for (size_t i = 0; i < lists.size(); i++) {
        const auto& el = results[2 * i + 1].reply.elements;
        std::vector<risk::ListOverlay::Entry> entries;
        for (size_t j = 0; j + 1 < el.size(); j += 2) {
          risk::ListOverlay::Entry e;
          std::string message;
          if (!risk::parseListEntry(lists[i].kind, el[j].str, &e.parsed, &message)) {
            stats_.bad_messages++;
            continue;
          }
          const std::string& score = el[j + 1].str;
          e.expiresAtMs = score == "inf" || score == "+inf" ? 0 : static_cast<int64_t>(std::atof(score.c_str()));
          e.addedAtMs = now;
          entries.push_back(std::move(e));
        }
        overlay_->replace(lists[i].name, lists[i].kind, std::move(entries), now, sent_ms);
      }
      stats_.resyncs++;
      stats_.last_resync_unix = now / 1000;
    });
  }

  // The subscriber: its own connection (a subscribed connection can run nothing else).
  void subscribe() {
    if (settings_.endpoints.empty()) return;
    // Each attempt takes the next endpoint: with a seed node down (a Redis Cluster failover) the
    // subscriber lands on another node, and cluster PUBLISH reaches every node's subscribers.
    const auto& [host, port] = settings_.endpoints[next_endpoint_++ % settings_.endpoints.size()];
    redisAsyncContext* ac = redisAsyncConnect(host.c_str(), port);
    if (!ac || ac->err) {
      if (ac) redisAsyncFree(ac);
      return;  // the timer tries again
    }
    if (redis::detail::libuvAttach(ac, loop_) != REDIS_OK) {
      redisAsyncFree(ac);
      return;
    }
    ac->data = this;
    sub_ = ac;
    redisAsyncSetConnectCallback(ac, [](const redisAsyncContext* c, int status) {
      auto* self = static_cast<Sync*>(c->data);
      if (status != REDIS_OK) self->lost(c);
    });
    redisAsyncSetDisconnectCallback(ac, [](const redisAsyncContext* c, int) {
      static_cast<Sync*>(c->data)->lost(c);
    });
    redis::detail::sendAuth(ac, settings_.username, settings_.password, &Sync::onAuth);
    std::vector<std::string> channels;
    if (settings_.sync_lists) channels.push_back(channel());
    if (settings_.share_risk) channels.push_back(riskChannel());
    std::vector<const char*> argv{"SUBSCRIBE"};
    std::vector<size_t> lens{9};
    for (const auto& ch : channels) {
      argv.push_back(ch.c_str());
      lens.push_back(ch.size());
    }
    redisAsyncCommandArgv(ac, &Sync::onMessage, nullptr, static_cast<int>(argv.size()), argv.data(),
                          lens.data());
  }

  void lost(const redisAsyncContext* c) {
    if (c != sub_) return;
    sub_ = nullptr;  // hiredis frees the context after this callback
    if (stats_.subscribed) LOG_WARN("risk sync: subscriber connection lost; reconnecting");
    stats_.subscribed = false;
    if (closing_) return;
    // Reconnect soon, not on the next resync tick: pushes are what makes changes take a second.
    uv_timer_start(timer_, &Sync::onTimer, static_cast<uint64_t>(kResubscribeDelay / kMillis),
                   static_cast<uint64_t>(resync_interval_ / kMillis));
  }

  static void onAuth(redisAsyncContext* c, void* r, void*) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply && reply->type == REDIS_REPLY_ERROR) {
      LOG_WARN("risk sync: subscriber AUTH refused");  // never the password
      redisAsyncDisconnect(c);
    }
  }

  static void onMessage(redisAsyncContext* c, void* r, void*) {
    auto* reply = static_cast<redisReply*>(r);
    auto* self = static_cast<Sync*>(c->data);
    if (!reply || self->closing_ || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
    std::string_view kind(reply->element[0]->str ? reply->element[0]->str : "", reply->element[0]->len);
    if (kind == "subscribe") {
      std::string_view ch(reply->element[1]->str ? reply->element[1]->str : "", reply->element[1]->len);
      LOG_INFO("risk sync: subscribed to %.*s", static_cast<int>(ch.size()), ch.data());
      if (!self->stats_.subscribed) self->resync();  // catch up on what was missed meanwhile
      self->stats_.subscribed = true;
      return;
    }
    if (kind != "message" || reply->element[2]->type != REDIS_REPLY_STRING) return;
    std::string_view ch(reply->element[1]->str ? reply->element[1]->str : "", reply->element[1]->len);
    std::string_view payload(reply->element[2]->str, reply->element[2]->len);
    if (ch == self->riskChannel()) {
      self->applyRisk(payload);
      return;
    }
    self->stats_.messages++;
    self->apply(payload);
  }

  // Entity updates go out in messages of at most 500 lines:
  //   first line  "v1 <TAB> INSTANCE <TAB> WALL_MS"
  //   then        "KIND <TAB> KEY <TAB> SCORE <TAB> COUNT <TAB> SKETCH_A <TAB> SKETCH_B"
  //               [ "<TAB> ESCALATION <TAB> PENDING <TAB> FAILURES" ]      (KEY, SKETCH_*: hex)
  // Updates of one entity within an interval are folded into one line first.
  static void onShareTimer(uv_timer_t* t) { static_cast<Sync*>(t->data)->publishRisk(); }

  void publishRisk() {
    batch_.clear();
    engine_->drainShared(&batch_);
    if (batch_.empty()) return;
    folded_.clear();
    index_.clear();
    for (const auto& u : batch_) {
      auto [it, fresh] = index_.try_emplace(u.key * 3 + static_cast<uint64_t>(u.kind), folded_.size());
      if (fresh) {
        folded_.push_back(u);
        continue;
      }
      risk::SharedEntityUpdate& f = folded_[it->second];
      f.score = std::max(f.score, u.score);
      f.count = static_cast<uint16_t>(std::min<uint32_t>(65535, uint32_t{f.count} + u.count));
      f.sketchA |= u.sketchA;
      f.sketchB |= u.sketchB;
      if (u.hasLadder) {  // the later ladder state wins
        f.hasLadder = true;
        f.ladder = u.ladder;
      }
    }
    const std::string head = "v1\t" + instance_ + "\t" + std::to_string(nowMs()) + "\n";
    std::string msg = head;
    char line[160];
    size_t in_msg = 0;
    for (const auto& u : folded_) {
      int n = snprintf(line, sizeof line, "%d\t%016llx\t%u\t%u\t%llx\t%llx", static_cast<int>(u.kind),
                       static_cast<unsigned long long>(u.key), u.score, u.count,
                       static_cast<unsigned long long>(u.sketchA), static_cast<unsigned long long>(u.sketchB));
      if (u.hasLadder)
        n += snprintf(line + n, sizeof line - static_cast<size_t>(n), "\t%u\t%u\t%u", u.ladder.escalation,
                      u.ladder.pendingLevel, u.ladder.failures);
      line[n++] = '\n';
      msg.append(line, static_cast<size_t>(n));
      if (++in_msg >= 500) {
        sendRisk(std::move(msg), in_msg);
        msg = head;
        in_msg = 0;
      }
    }
    if (in_msg) sendRisk(std::move(msg), in_msg);
  }

  void sendRisk(std::string msg, size_t updates) {
    auto alive = alive_;
    client_->command(redis::RedisCommand::keyless({"PUBLISH", riskChannel(), std::move(msg)}),
                     [this, alive, updates](redis::RedisResult& r) {
                       if (!*alive) return;
                       if (r.succeeded()) stats_.risk_sent += updates;
                       else stats_.risk_dropped += updates;  // best effort: the next band or move retells it
                     });
  }

  void applyRisk(std::string_view msg) {
    size_t nl = msg.find('\n');
    std::vector<std::string_view> head = splitTabs(msg.substr(0, nl));
    if (head.size() != 3 || head[0] != "v1" || nl == std::string_view::npos) {
      stats_.bad_messages++;
      return;
    }
    if (head[1] == instance_) return;  // our own, back from Redis
    const int64_t sent = std::atoll(std::string(head[2]).c_str());
    const int64_t age_ms = std::max<int64_t>(0, nowMs() - sent);
    const uint32_t age = static_cast<uint32_t>(std::min<int64_t>(age_ms / 1000, 86400));
    const Nanos now = SteadyClock::monotonicNanos();
    msg.remove_prefix(nl + 1);
    while (!msg.empty()) {
      nl = msg.find('\n');
      std::string_view line = msg.substr(0, nl);
      msg.remove_prefix(nl == std::string_view::npos ? msg.size() : nl + 1);
      std::vector<std::string_view> f = splitTabs(line);
      risk::SharedEntityUpdate u;
      unsigned long long key = 0, ska = 0, skb = 0;
      int kind = -1;
      unsigned score = 0, count = 0, esc = 0, pend = 0, fail = 0;
      const std::string text(line);
      bool ok = false;
      if (f.size() == 6) {
        ok = sscanf(text.c_str(), "%d\t%llx\t%u\t%u\t%llx\t%llx", &kind, &key, &score, &count, &ska, &skb) == 6;
      } else if (f.size() == 9) {
        ok = sscanf(text.c_str(), "%d\t%llx\t%u\t%u\t%llx\t%llx\t%u\t%u\t%u", &kind, &key, &score, &count,
                    &ska, &skb, &esc, &pend, &fail) == 9;
        u.hasLadder = ok;
      }
      if (!ok || kind < 0 || kind >= risk::kEntityKinds || key == 0 || score > 100 || count > 65535 ||
          esc > 255 || pend > 255 || fail > 255) {
        stats_.bad_messages++;
        continue;
      }
      u.kind = static_cast<risk::EntityKind>(kind);
      u.key = key;
      u.score = static_cast<uint8_t>(score);
      u.count = static_cast<uint16_t>(count);
      u.sketchA = ska;
      u.sketchB = skb;
      u.ladder.escalation = static_cast<uint8_t>(esc);
      u.ladder.pendingLevel = static_cast<uint8_t>(pend);
      u.ladder.failures = static_cast<uint8_t>(fail);
      engine_->applyShared(*policy_, u, age, now);
      stats_.risk_applied++;
    }
  }

  static std::string randomInstanceId() {
    uint64_t v = 0;
    FILE* f = fopen("/dev/urandom", "rb");
    if (f) {
      if (fread(&v, sizeof v, 1, f) != 1) v = 0;
      fclose(f);
    }
    if (v == 0) v = static_cast<uint64_t>(wallMicros()) ^ (static_cast<uint64_t>(getpid()) << 40);
    char buf[17];
    snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
  }

  void apply(std::string_view msg) {
    std::vector<std::string_view> f = splitTabs(msg);
    const bool add = f[0] == "add";
    if ((!add && f[0] != "del") || f.size() < (add ? 4u : 3u)) {
      stats_.bad_messages++;
      return;
    }
    const ListInfo* info = nullptr;
    for (const auto& l : lists_)
      if (l.name == f[1]) info = &l;
    if (!info) return;  // a list this instance does not have configured
    int64_t expires = 0;
    size_t first = 2;
    if (add) {
      expires = std::atoll(std::string(f[2]).c_str());
      first = 3;
    }
    std::vector<risk::ListEntry> entries;
    for (size_t i = first; i < f.size(); i++) {
      risk::ListEntry e;
      std::string message;
      if (!risk::parseListEntry(info->kind, f[i], &e, &message)) {
        stats_.bad_messages++;
        continue;
      }
      entries.push_back(std::move(e));
    }
    const int64_t now = nowMs();
    if (add) {
      if (expires == 0 || expires > now) overlay_->add(info->name, info->kind, entries, expires, now);
    } else {
      std::vector<std::string> canonical;
      for (auto& e : entries) canonical.push_back(std::move(e.canonical));
      overlay_->remove(info->name, canonical);
    }
  }

  uv_loop_t* loop_;
  RedisSettings settings_;
  std::vector<ListInfo> lists_;
  risk::RiskEngine* engine_;
  risk::ListOverlay* overlay_;
  risk::RiskPolicyPtr policy_;
  Nanos resync_interval_;
  std::string instance_;
  uv_timer_t* share_timer_ = nullptr;
  size_t next_endpoint_ = 0;
  std::vector<risk::SharedEntityUpdate> batch_, folded_;
  std::unordered_map<uint64_t, size_t> index_;
  redis::RedisClientPtr client_;
  redisAsyncContext* sub_ = nullptr;
  uv_timer_t* timer_ = nullptr;
  bool closing_ = false;
  bool writing_ = false;
  bool resyncing_ = false;
  std::deque<std::vector<redis::RedisCommand>> pending_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  Stats stats_;
};

std::unique_ptr<Sync>& instance() {
  static auto* s = new std::unique_ptr<Sync>;  // control thread only
  return *s;
}

}  // namespace

void RiskSync::configure(uv_loop_t* loop, const Config& cfg) {
  auto& sync = instance();
  const bool on = cfg.redis && (cfg.redis->sync_lists || cfg.redis->share_risk) && cfg.risk;
  if (!on) {
    if (sync) LOG_INFO("risk sync: off");
    sync.reset();
    return;
  }
  std::vector<ListInfo> lists;
  for (const auto& src : cfg.risk->policy->config.lists) lists.push_back({src.name, src.kind});
  if (sync && sync->sameAs(*cfg.redis)) {
    sync->setLists(std::move(lists), cfg.risk->policy);
    return;
  }
  sync.reset();
  sync = std::make_unique<Sync>(loop, *cfg.redis, std::move(lists), RiskPhase::engine(cfg),
                                cfg.risk->policy);
}

void RiskSync::shutdown() { instance().reset(); }

void RiskSync::publishAdd(const Config&, const std::string& list, risk::ListKind,
                          const std::vector<risk::ListEntry>& entries, int64_t expires_ms) {
  auto& sync = instance();
  if (!sync || !sync->listsOn() || entries.empty()) return;
  std::vector<std::string> zadd{"ZADD", sync->keyOf(list)};
  std::string msg = "add\t" + list + "\t" + std::to_string(expires_ms);
  for (const auto& e : entries) {
    zadd.push_back(expires_ms ? std::to_string(expires_ms) : "+inf");
    zadd.push_back(e.canonical);
    msg += "\t" + e.canonical;
  }
  sync->write({redis::RedisCommand::of(std::move(zadd)),
               redis::RedisCommand::keyless({"PUBLISH", sync->channel(), msg})});
}

void RiskSync::publishRemove(const Config&, const std::string& list,
                             const std::vector<std::string>& canonical) {
  auto& sync = instance();
  if (!sync || !sync->listsOn() || canonical.empty()) return;
  std::vector<std::string> zrem{"ZREM", sync->keyOf(list)};
  std::string msg = "del\t" + list;
  for (const auto& c : canonical) {
    zrem.push_back(c);
    msg += "\t" + c;
  }
  sync->write({redis::RedisCommand::of(std::move(zrem)),
               redis::RedisCommand::keyless({"PUBLISH", sync->channel(), msg})});
}

std::string RiskSync::statusJson() {
  auto& sync = instance();
  if (!sync) return "{\"enabled\":false}";
  const Stats& s = sync->stats();
  return std::string("{\"enabled\":true,\"lists\":") + (sync->listsOn() ? "true" : "false") +
         ",\"instance\":\"" + sync->instanceId() + "\",\"risk_sent\":" + std::to_string(s.risk_sent) +
         ",\"risk_dropped\":" + std::to_string(s.risk_dropped) + ",\"risk_applied\":" +
         std::to_string(s.risk_applied) + ",\"subscribed\":" + (s.subscribed ? "true" : "false") +
         ",\"channel\":\"" + jsonEscape(sync->channel()) + "\",\"messages\":" + std::to_string(s.messages) +
         ",\"bad_messages\":" + std::to_string(s.bad_messages) + ",\"resyncs\":" + std::to_string(s.resyncs) +
         ",\"resync_failures\":" + std::to_string(s.resync_failures) +
         ",\"last_resync_unix\":" + std::to_string(s.last_resync_unix) +
         ",\"writes\":" + std::to_string(s.writes) + ",\"write_failures\":" + std::to_string(s.write_failures) +
         "}";
}

}  // namespace sluice
