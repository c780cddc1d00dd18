// Registration of the `resdist` CLI's subcommands. Each command group lives in its own file
// (dataset_command.cc, ...) and adds itself to the CLI11 app here; main.cc only dispatches.
#pragma once

#include <CLI/CLI.hpp>

namespace resdist::client {

// What a command's callback reports back to main(): the process exit status.
struct CommandResult {
  int exit_code = 0;
};

// `resdist dataset convert|inspect`.
void register_dataset_commands(CLI::App& app, CommandResult& result);

}  // namespace resdist::client
