//! Text in and out of models: tokenisation, chat templates, examples as token ids, and
//! matching answers against references.

pub mod chat_template;
pub mod matching;
pub mod sft;
pub mod tokenizer;
