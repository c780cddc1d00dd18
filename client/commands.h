// Registration of the `resdist` CLI's subcommands. Each command group lives in its own file
// (dataset_command.cc, ...) and adds itself to the CLI11 app here; main.cc only dispatches.
#pragma once

#include <CLI/CLI.hpp>

#include "client/rpc.h"

namespace resdist::client {

// What a command's callback reports back to main(): the process exit status.
struct CommandResult {
  int exit_code = 0;
};

// `resdist dataset convert|inspect`.
void register_dataset_commands(CLI::App& app, CommandResult& result);

// `resdist submit|jobs|status|watch|checkpoint|cancel|logs` (job_commands.cc). `global` is
// filled by the parser before any callback runs.
void register_job_commands(CLI::App& app, const GlobalOptions& global, CommandResult& result);

}  // namespace resdist::client
