use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let devices = whetstone_engine::device::list_devices();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
    } else {
        for d in devices {
            let mem = d.memory_bytes.map(whetstone_engine::device::fmt_gb).unwrap_or_else(|| "?".into());
            println!("{:<8} {:<6} {:>9}  {}", d.name, d.backend, mem, d.description);
        }
    }
    Ok(())
}
