//! Writes every target's seeds into `corpus/TARGET/seed-NAME` (scripts/fuzz.sh seed).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for seed in chorus_fuzz::seeds::all() {
        let dir = corpus.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(seed.file_name());
        std::fs::write(&path, &seed.data)?;
        println!("{}", path.display());
    }
    Ok(())
}
