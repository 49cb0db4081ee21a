//! Text in and out of models: tokenisation and chat templates.

pub mod chat_template;
pub mod tokenizer;
