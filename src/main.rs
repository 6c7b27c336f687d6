fn main() -> std::process::ExitCode {
    foodclip::cli::main()
}
