//! Who is calling: `Authorization: Bearer <customer>`.
//!
//! Kept simple on purpose: the token *is* the customer's name. A real deployment verifies
//! a signed token instead (a JWT checked against the identity provider's keys, or a
//! session looked up server side) and takes the customer from its verified claims; the
//! rest of the service only needs the `Customer` this extractor yields.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::error::ApiError;

/// The longest customer name, in bytes (it is part of every idempotency scope).
pub(crate) const CUSTOMER_BYTES_MAX: usize = 64;

/// The authenticated customer of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Customer(String);

impl Customer {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(name: &str) -> Self {
        Self(name.to_string())
    }

    /// Reads `Authorization: Bearer <customer>`: 1 to [`CUSTOMER_BYTES_MAX`] bytes of the
    /// token68 alphabet (RFC 7235: letters, digits, `-._~+/`, trailing `=`).
    fn from_header(value: Option<&str>) -> Result<Self, ApiError> {
        let value = value.ok_or_else(|| {
            ApiError::Unauthenticated("send `Authorization: Bearer <customer>`".into())
        })?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            ApiError::Unauthenticated("the Authorization header is not `Bearer <token>`".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthenticated(
                "the Authorization scheme is not Bearer".into(),
            ));
        }
        let token = token.trim();
        let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
        if token.is_empty() || token.len() > CUSTOMER_BYTES_MAX || !token.chars().all(token68) {
            return Err(ApiError::Unauthenticated(format!(
                "the bearer token is not 1 to {CUSTOMER_BYTES_MAX} token68 characters"
            )));
        }
        Ok(Self(token.to_string()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION);
        let value = value.map(|value| value.to_str()).transpose().map_err(|_| {
            ApiError::Unauthenticated("the Authorization header is not ASCII".into())
        })?;
        Self::from_header(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_names_the_customer() {
        let alice = Customer::from_header(Some("Bearer alice")).unwrap();
        assert_eq!(alice.as_str(), "alice");
        assert_eq!(
            Customer::from_header(Some("bearer bob-2"))
                .unwrap()
                .as_str(),
            "bob-2"
        );
        let refused = [
            None,
            Some("alice"),
            Some("Basic YWxpY2U6"),
            Some("Bearer "),
            Some("Bearer a b"),
            Some("Bearer a\"b"),
        ];
        for value in refused {
            assert!(
                matches!(
                    Customer::from_header(value),
                    Err(ApiError::Unauthenticated(_))
                ),
                "{value:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(CUSTOMER_BYTES_MAX + 1));
        assert!(Customer::from_header(Some(&long)).is_err());
        let longest = format!("Bearer {}", "a".repeat(CUSTOMER_BYTES_MAX));
        assert!(Customer::from_header(Some(&longest)).is_ok());
    }
}
