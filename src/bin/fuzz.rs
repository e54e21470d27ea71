//! The AFL++ driver for bootyard's fuzz targets (`bootyard::fuzzing`): `bootyard-fuzz
//! TARGET` under `cargo afl fuzz`, in AFL's persistent mode; `bootyard-fuzz --seeds DIR`
//! writes a seed corpus for every target. Built and run by `./x fuzz`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        let names: Vec<&str> = bootyard::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
        println!("{}", names.join(" "));
        return;
    }
    if let [flag, dir] = args.as_slice() {
        if flag == "--seeds" {
            let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            match bootyard::fuzzing::write_seeds(std::path::Path::new(dir), repo) {
                Ok(n) => {
                    eprintln!("{n} seeds under {dir}");
                    return;
                }
                Err(e) => {
                    eprintln!("bootyard-fuzz: cannot write seeds: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let name = args.first().cloned().unwrap_or_default();
    let Some(target) = bootyard::fuzzing::target(&name) else {
        let names: Vec<&str> = bootyard::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: bootyard-fuzz TARGET (one of: {}) | --seeds DIR",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
