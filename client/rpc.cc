// Channel and token handling for the CLI.
#include "client/rpc.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace resdist::client {

StatusOr<Rpc> Rpc::Connect(const GlobalOptions& options) {
  Rpc rpc;
  rpc.options_ = options;
  if (options.coordinator.empty())
    return absl::InvalidArgumentError("--coordinator: empty address (expected host:port)");
  if (!options.token_file.empty()) {
    std::ifstream in(options.token_file);
    if (!in)
      return absl::NotFoundError(absl::StrCat("--token-file '", options.token_file,
                                              "': cannot open (or set RESDIST_TOKEN_FILE)"));
    std::string line;
    std::getline(in, line);
    rpc.token_ = std::string(absl::StripAsciiWhitespace(line));
    if (rpc.token_.empty())
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file '", options.token_file, "' is empty"));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    std::ifstream in(options.tls_ca);
    if (!in) return absl::NotFoundError(absl::StrCat("--tls-ca '", options.tls_ca, "': cannot open"));
    std::stringstream ss;
    ss << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ss.str();
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  rpc.stub_ = v1::JobService::NewStub(grpc::CreateCustomChannel(options.coordinator, creds, args));
  return rpc;
}

std::unique_ptr<grpc::ClientContext> Rpc::Context(std::chrono::milliseconds timeout) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
  if (timeout.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

Status Rpc::Explain(const grpc::Status& s) const {
  const auto code = static_cast<absl::StatusCode>(s.error_code());
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return absl::OkStatus();
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Status(code, absl::StrCat("cannot reach the coordinator at ", options_.coordinator,
                                       " (", s.error_message(),
                                       "); is resdist-coordinator running there? Set "
                                       "--coordinator or RESDIST_COORDINATOR"));
    case grpc::StatusCode::UNAUTHENTICATED:
      return Status(code, absl::StrCat("the coordinator at ", options_.coordinator,
                                       " rejected the credentials: ", s.error_message(),
                                       token_.empty() ? "; give --token-file or RESDIST_TOKEN_FILE"
                                                      : absl::StrCat("; check the token in ",
                                                                     options_.token_file)));
    default:
      return Status(code, s.error_message());
  }
}

}  // namespace resdist::client
