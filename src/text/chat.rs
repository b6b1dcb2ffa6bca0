//! Chat templates from tokenizer_config.json, rendered with minijinja the way transformers
//! renders them with jinja2 (trim_blocks, lstrip_blocks, Python string methods, raise_exception).

use minijinja::{Environment, ErrorKind as JinjaErrorKind, context};
use serde::Serialize;

use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `template` for `messages`; `special` holds bos_token, eos_token and the like.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special: &[(String, String)],
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::invalid_model(format!("chat template does not parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::internal(e.to_string()))?;
    let mut ctx: std::collections::BTreeMap<String, minijinja::Value> = special
        .iter()
        .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
        .collect();
    ctx.insert(
        "messages".into(),
        minijinja::Value::from_serialize(messages),
    );
    ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
    tmpl.render(context! { ..minijinja::Value::from(ctx) })
        .map_err(|e| Error::invalid_argument(format!("chat template: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_python_methods_and_trim() {
        let t = "{% for m in messages %}\n{{ m['role'].upper() }}: {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let out = render(t, &[ChatMessage::new("user", "  hi ")], true, &[]).unwrap();
        assert_eq!(out, "USER: hi\nA:");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ raise_exception('roles must alternate') }}";
        let err = render(t, &[], false, &[]).unwrap_err();
        assert!(err.message().contains("roles must alternate"), "{err}");
    }
}
