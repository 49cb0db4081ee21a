use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// The text to score.
    #[arg(long)]
    pub text: String,
    /// Print JSON: ids, token_logprobs, mean_nll, perplexity.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let ids = m.tokenizer.encode(&a.text, true)?;
    let lp = m.token_logprobs(&ids)?;
    let mean_nll = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
    if a.json {
        println!("{}", serde_json::json!({"ids": ids, "token_logprobs": lp, "mean_nll": mean_nll, "perplexity": mean_nll.exp()}));
    } else {
        for (i, l) in lp.iter().enumerate() {
            let tok = m.tokenizer.decode(&ids[i + 1..i + 2], false)?;
            println!("{:>6} {:>10.4}  {:?}", ids[i + 1], l, tok);
        }
        println!("mean NLL {:.4}  perplexity {:.3}  ({} tokens)", mean_nll, mean_nll.exp(), ids.len());
    }
    Ok(())
}
