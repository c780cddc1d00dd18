// The CLI's connection to the coordinator: channel (plaintext or TLS), bearer token, and error
// messages that say what to fix (unreachable coordinator, wrong token, unknown job). Not the
// commands themselves (job_commands.cc).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "common/status.h"
#include "resdist/v1/job_service.grpc.pb.h"

namespace resdist::client {

// Global options of `resdist` (flags, or RESDIST_COORDINATOR / RESDIST_TOKEN_FILE /
// RESDIST_TLS_CA).
struct GlobalOptions {
  std::string coordinator = "127.0.0.1:7070";
  std::string token_file;
  std::string tls_ca;
};

class Rpc {
 public:
  static StatusOr<Rpc> Connect(const GlobalOptions& options);

  v1::JobService::Stub& stub() { return *stub_; }
  // A context with the token and a deadline (0: none, for streams).
  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout) const;
  // A gRPC failure as a user-facing error: "cannot reach the coordinator at ...", ...
  Status Explain(const grpc::Status& status) const;
  const std::string& address() const { return options_.coordinator; }

 private:
  GlobalOptions options_;
  std::string token_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

}  // namespace resdist::client
