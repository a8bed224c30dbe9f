//! `[web]`: the page the API serves at `/` — where it sends a user who needs
//! credits, and whether it offers the development sign-in.

use serde::Deserialize;

/// Longest `web.pricing_url` accepted.
const PRICING_URL_MAX: usize = 2_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Where the page's "buy credits" link goes: a path on the same site
    /// (`/pricing`, for a site that serves genq behind its own proxy) or an
    /// `http(s)://` URL.
    pub pricing_url: String,
    /// Offer `POST /v1/dev/sign-in`: anyone may get a user token for
    /// `dev:<name>`. For development and the browser tests only; off, the
    /// endpoint answers 404.
    pub dev_sign_in: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            pricing_url: "/pricing".into(),
            dev_sign_in: false,
        }
    }
}

impl WebSettings {
    /// The first key whose value can't work, and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let url = self.pricing_url.as_str();
        let scheme_ok = url.starts_with("https://")
            || url.starts_with("http://")
            // A path on this site, but not `//host` (another site, scheme-relative).
            || (url.starts_with('/') && !url.starts_with("//"));
        if !scheme_ok
            || url.len() > PRICING_URL_MAX
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err((
                "web.pricing_url",
                "must be a path starting with / or an http(s):// URL, without spaces, at most 2000 characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_url_must_be_a_path_or_a_web_url() {
        let with = |url: &str| WebSettings {
            pricing_url: url.into(),
            dev_sign_in: false,
        };
        for ok in [
            "/pricing",
            "https://example.com/pricing?plan=a",
            "http://localhost:3000/p",
        ] {
            assert!(with(ok).check().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "pricing",
            "//evil.example",
            "javascript:alert(1)",
            "/a b",
            "ftp://x",
        ] {
            assert!(with(bad).check().is_err(), "{bad:?}");
        }
    }
}
