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
            println!("{:<8} {:<6} {}", d.name, d.backend, d.description);
        }
    }
    Ok(())
}
