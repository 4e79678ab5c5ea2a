#include "proxy/upstream/health_checker.h"

#include <llhttp.h>

#include <string>

#include "core/log.h"
#include "core/strings.h"

namespace sluice {

class HealthProbe {
 public:
  HealthProbe(uv_loop_t* loop, UpstreamClusterPtr cluster, size_t index)
      : loop_(loop), cluster_(std::move(cluster)), index_(index) {
    uv_timer_init(loop_, &timer_);
    timer_.data = this;
    llhttp_settings_init(&settings_);
    // The status, and the saturation header when the pool has one: the probe then doubles as
    // the polled status URL of the application tier (docs/limiting.md, saturation).
    settings_.on_header_field = [](llhttp_t* p, const char* at, size_t n) -> int {
      auto* self = static_cast<HealthProbe*>(p->data);
      if (self->field_done_) self->field_.clear(), self->value_.clear();
      self->field_done_ = false;
      if (self->field_.size() + n <= 256) self->field_.append(at, n);
      return 0;
    };
    settings_.on_header_value = [](llhttp_t* p, const char* at, size_t n) -> int {
      auto* self = static_cast<HealthProbe*>(p->data);
      self->field_done_ = true;
      if (self->value_.size() + n <= 256) self->value_.append(at, n);
      return 0;
    };
    settings_.on_header_value_complete = [](llhttp_t* p) -> int {
      auto* self = static_cast<HealthProbe*>(p->data);
      auto& gate = self->cluster_->gate();
      const std::string& want = gate.saturationConfig().header;
      if (!want.empty() && equalsIgnoreCase(self->field_, want))
        gate.reportSaturation(self->value_, SteadyClock::monotonicNanos());
      return 0;
    };
    settings_.on_headers_complete = [](llhttp_t* p) -> int {
      static_cast<HealthProbe*>(p->data)->status_ = p->status_code;
      return HPE_PAUSED;  // the head is all we need
    };
  }

  void start() { schedule(0); }

  void stop() {
    stopped_ = true;
    uv_timer_stop(&timer_);
    closeSocket();
    if (!timer_closed_) {
      timer_closed_ = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) {
        auto* self = static_cast<HealthProbe*>(h->data);
        self->maybeDelete();
      });
    }
  }

 private:
  const HealthCheckConfig& cfg() const { return cluster_->config().health_check; }

  void schedule(uint64_t delay_ms) {
    if (stopped_) return;
    phase_ = Phase::kWaiting;
    uv_timer_start(&timer_, onTimer, delay_ms, 0);
  }

  static void onTimer(uv_timer_t* t) {
    auto* self = static_cast<HealthProbe*>(t->data);
    if (self->phase_ == Phase::kWaiting) self->probe();
    else self->finish(false, "timeout");
  }

  void probe() {
    if (tcp_open_) {  // previous socket still closing: try again rather than stop probing
      schedule(1);
      return;
    }
    phase_ = Phase::kProbing;
    status_ = 0;
    field_.clear();
    value_.clear();
    field_done_ = false;
    llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
    parser_.data = this;
    uv_tcp_init(loop_, &tcp_);
    tcp_.data = this;
    tcp_open_ = true;
    auto& server = cluster_->server(index_);
    connect_.data = this;
    int rc = uv_tcp_connect(&connect_, &tcp_, reinterpret_cast<const sockaddr*>(&server.sockaddr),
                            onConnect);
    uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(cfg().timeout / kMillis) + 1, 0);
    if (rc != 0) finish(false, uv_strerror(rc));
  }

  static void onConnect(uv_connect_t* req, int status) {
    auto* self = static_cast<HealthProbe*>(req->data);
    if (self->phase_ != Phase::kProbing) return;
    if (status != 0) {
      self->finish(false, uv_strerror(status));
      return;
    }
    const auto& server = self->cluster_->server(self->index_);
    std::string host = self->cfg().host.empty() ? server.address : self->cfg().host;
    self->request_ = "GET " + self->cfg().path + " HTTP/1.1\r\nHost: " + host +
                     "\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n";
    uv_buf_t b = uv_buf_init(self->request_.data(), static_cast<unsigned>(self->request_.size()));
    self->write_.data = self;
    uv_write(&self->write_, reinterpret_cast<uv_stream_t*>(&self->tcp_), &b, 1,
             [](uv_write_t*, int) {});
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&self->tcp_),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* p = static_cast<HealthProbe*>(h->data);
          *buf = uv_buf_init(p->buf_, sizeof(p->buf_));
        },
        onRead);
  }

  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto* self = static_cast<HealthProbe*>(s->data);
    if (self->phase_ != Phase::kProbing || nread == 0) return;
    if (nread < 0) {
      self->finish(false, "connection closed before a status");
      return;
    }
    llhttp_errno_t err = llhttp_execute(&self->parser_, buf->base, static_cast<size_t>(nread));
    if (self->status_ != 0) {
      const auto& c = self->cfg();
      bool ok = self->status_ >= c.expect_status_min && self->status_ <= c.expect_status_max;
      self->finish(ok, ok ? "" : ("status " + std::to_string(self->status_)).c_str());
    } else if (err != HPE_OK) {
      self->finish(false, "invalid response");
    }
  }

  void finish(bool ok, const std::string& why) {
    uv_timer_stop(&timer_);
    closeSocket();
    auto& s = cluster_->server(index_);
    const auto& c = cfg();
    if (ok) {
      s.check_fail_streak = 0;
      if (++s.check_ok_streak >= c.rise && !s.healthy.load()) {
        s.healthy.store(true);
        LOG_INFO("upstream %s: server %s is healthy again", cluster_->config().name.c_str(),
                 s.address.c_str());
      }
    } else {
      s.check_ok_streak = 0;
      if (++s.check_fail_streak >= c.fall && s.healthy.load()) {
        s.healthy.store(false);
        LOG_WARN("upstream %s: server %s failed health checks (%s)",
                 cluster_->config().name.c_str(), s.address.c_str(), why.c_str());
      }
    }
    schedule(static_cast<uint64_t>(c.interval / kMillis));
  }

  void closeSocket() {
    if (!tcp_open_ || tcp_closing_) return;
    tcp_closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), [](uv_handle_t* h) {
      auto* self = static_cast<HealthProbe*>(h->data);
      self->tcp_open_ = false;
      self->tcp_closing_ = false;
      self->maybeDelete();
    });
  }

  void maybeDelete() {
    if (stopped_ && timer_closed_ && !tcp_open_ && !deleted_) {
      deleted_ = true;
      // Deleted on the next turn: we may still be inside one of our own callbacks.
      delete this;
    }
  }

  enum class Phase { kWaiting, kProbing };
  uv_loop_t* loop_;
  UpstreamClusterPtr cluster_;
  size_t index_;
  uv_timer_t timer_;
  uv_tcp_t tcp_;
  uv_connect_t connect_;
  uv_write_t write_;
  llhttp_t parser_;
  llhttp_settings_t settings_;
  std::string request_;
  char buf_[4096];
  int status_ = 0;
  std::string field_, value_;  // the header being parsed
  bool field_done_ = false;
  Phase phase_ = Phase::kWaiting;
  bool tcp_open_ = false;
  bool tcp_closing_ = false;
  bool stopped_ = false;
  bool timer_closed_ = false;
  bool deleted_ = false;
};

HealthChecker::HealthChecker(uv_loop_t* loop, const std::vector<UpstreamClusterPtr>& clusters)
    : loop_(loop) {
  for (const auto& c : clusters) {
    if (!c->config().health_check.enabled) continue;
    for (size_t i = 0; i < c->size(); i++) probes_.push_back(new HealthProbe(loop_, c, i));
  }
}

HealthChecker::~HealthChecker() = default;

void HealthChecker::start() {
  for (auto* p : probes_) p->start();
}

void HealthChecker::stop() {
  for (auto* p : probes_) p->stop();
  probes_.clear();
}

}  // namespace sluice
