// The `crosscoder` command-line tool: one subcommand per pipeline stage, each a thin layer of
// flags over library calls (see cli.hpp).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli.hpp"
#include "crosscoder/communicator.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/version.hpp"

int main(int argc, char** argv) {
  using namespace crosscoder::cli;
  CLI::App app{"crosscoder: sparse crosscoders for model diffing"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(crosscoder::version_string));
  const std::vector<std::pair<std::string, Runner>> commands = {
      {"backends", add_backends_command(app)}, {"demo", add_demo_command(app)},
      {"train", add_train_command(app)},       {"diff", add_diff_command(app)},
      {"examples", add_examples_command(app)}, {"export", add_export_command(app)},
      {"info", add_info_command(app)},
  };
  CLI11_PARSE(app, argc, argv);
  // Under an MPI launcher, MPI lives as long as the program, so that an error on this rank can
  // still end the whole job (the other ranks may be waiting for it in a collective).
  std::shared_ptr<crosscoder::Communicator> world;
  try {
    if (crosscoder::launched_by_mpi_launcher() && crosscoder::mpi_built())
      world = crosscoder::mpi_communicator();
    for (const auto& [name, run] : commands) {
      if (app.got_subcommand(name)) return run();
    }
  } catch (const crosscoder::Error& error) {
    if (world && world->size() > 1) {
      world->abort(fmt::format("crosscoder: error on rank {} of {}: {}", world->rank(),
                               world->size(), error.what()));
    }
    std::fprintf(stderr, "crosscoder: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
