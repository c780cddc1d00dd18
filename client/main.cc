// Entry point of the `resdist` CLI: builds the CLI11 app from the registered command groups and
// runs the chosen one. Commands live in their own files; see commands.h.
#include <CLI/CLI.hpp>

#include "client/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"resdist: data-parallel ResNet training (datasets, jobs)", "resdist"};
  app.require_subcommand(1);
  resdist::client::CommandResult result;
  resdist::client::GlobalOptions global;
  app.add_option("--coordinator", global.coordinator, "coordinator address host:port")
      ->envname("RESDIST_COORDINATOR")
      ->capture_default_str();
  app.add_option("--token-file", global.token_file, "file holding the coordinator's token")
      ->envname("RESDIST_TOKEN_FILE");
  app.add_option("--tls-ca", global.tls_ca, "PEM roots to verify a TLS coordinator")
      ->envname("RESDIST_TLS_CA");
  resdist::client::register_dataset_commands(app, result);
  resdist::client::register_job_commands(app, global, result);
  CLI11_PARSE(app, argc, argv);
  return result.exit_code;
}
