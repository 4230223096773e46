//! The `tierpool` command line: `tierpool demo` runs a simulation of the
//! workload tierpool was designed from (see `--help`).

mod cli;

fn main() {
    std::process::exit(cli::main(std::env::args().skip(1).collect()));
}
