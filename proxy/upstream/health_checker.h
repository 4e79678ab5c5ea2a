#pragma once
// Active HTTP health checks, run on the control loop for every upstream with `health_check`.
// Each server is probed every `interval` with a fresh connection (GET path, Connection: close);
// `rise` passes in a row mark it healthy, `fall` failures in a row unhealthy. Workers read the
// verdict from the server's atomic and never wait on a probe.
#include <uv.h>

#include <memory>
#include <vector>

#include "proxy/upstream/upstream_cluster.h"

namespace sluice {

class HealthProbe;

class HealthChecker {
 public:
  HealthChecker(uv_loop_t* loop, const std::vector<UpstreamClusterPtr>& clusters);
  ~HealthChecker();
  void start();
  void stop();  // closes every handle; the loop may then end

 private:
  uv_loop_t* loop_;
  std::vector<HealthProbe*> probes_;  // owned; freed after their handles close
};

}  // namespace sluice
