// Entry point of the `resdist` CLI: builds the CLI11 app from the registered command groups and
// runs the chosen one. Commands live in their own files; see commands.h.
#include <CLI/CLI.hpp>

#include "client/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"resdist: data-parallel ResNet training (datasets, jobs)", "resdist"};
  app.require_subcommand(1);
  resdist::client::CommandResult result;
  resdist::client::register_dataset_commands(app, result);
  CLI11_PARSE(app, argc, argv);
  return result.exit_code;
}
