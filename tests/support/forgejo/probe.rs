//! The other side of the fake, for the tests that hold it to Forgejo (`tests/fake_forgejo.rs`): a plain HTTP
//! client of its REST API ([`Api`]) and a checker of JSON values against Forgejo's own OpenAPI description
//! ([`Spec`], read from `../shared/forgejo`).

use reqwest::Method;
use serde_json::Value;

use super::FakeForgejo;

/// `../shared/forgejo`: Forgejo's OpenAPI description and real webhook bodies.
pub const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/forgejo");

pub fn read_shared(path: &str) -> Vec<u8> {
    std::fs::read(format!("{SHARED}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Forgejo's swagger 2.0 definitions, and a checker of JSON values against them.
pub struct Spec(Value);

impl Spec {
    pub fn load() -> Spec {
        Spec(serde_json::from_slice(&read_shared("openapi-forgejo-17.json")).unwrap())
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => &self.0["definitions"][r.trim_start_matches("#/definitions/")],
            None => schema,
        }
    }

    /// Fails on a property the definition lacks, a wrong JSON type (nested objects too, `null` allowed as Go
    /// writes nil pointers and slices), a missing `required` property, or a missing or null one of `must`.
    pub fn check(&self, name: &str, value: &Value, must: &[&str]) {
        let mut errors = Vec::new();
        self.object(&self.0["definitions"][name], value, name, &mut errors, 0);
        for key in must {
            if value.get(key).is_none_or(Value::is_null) {
                errors.push(format!("{name}.{key}: missing or null"));
            }
        }
        assert!(errors.is_empty(), "{name} does not match the spec:\n{}\n{value:#}", errors.join("\n"));
    }

    fn object(&self, def: &Value, v: &Value, path: &str, errors: &mut Vec<String>, depth: usize) {
        let Some(map) = v.as_object() else { return errors.push(format!("{path}: not an object")) };
        for required in def["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !map.contains_key(required) {
                errors.push(format!("{path}.{required}: required"));
            }
        }
        for (key, value) in map {
            match def["properties"].get(key) {
                None => errors.push(format!("{path}.{key}: not defined by the spec")),
                Some(schema) => self.value(schema, value, &format!("{path}.{key}"), errors, depth + 1),
            }
        }
    }

    fn value(&self, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>, depth: usize) {
        if v.is_null() {
            return;
        }
        let schema = self.resolve(schema);
        let ty = schema["type"].as_str().or(schema.get("properties").map(|_| "object"));
        let ok = match ty {
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("array") => v.is_array(),
            Some("object") => v.is_object(),
            _ => true,
        };
        if !ok {
            return errors.push(format!("{path}: {v} is not of type {}", ty.unwrap_or("?")));
        }
        if let Some(allowed) = schema["enum"].as_array().filter(|_| ty == Some("string"))
            && !allowed.contains(v)
        {
            errors.push(format!("{path}: {v} is not one of {allowed:?}"));
        }
        match (ty, v) {
            (Some("array"), Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(&schema["items"], item, &format!("{path}[{i}]"), errors, depth);
                }
            }
            (Some("object"), _) if schema.get("properties").is_some() && depth < 8 => {
                self.object(schema, v, path, errors, depth)
            }
            (Some("object"), Value::Object(map)) if schema.get("additionalProperties").is_some() => {
                for (key, value) in map {
                    self.value(&schema["additionalProperties"], value, &format!("{path}.{key}"), errors, depth);
                }
            }
            _ => {}
        }
    }
}

/// forgefleet's side of the REST API: real HTTP with a token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One answer of the fake: status, headers and the body as it came.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        if self.text.is_empty() { Value::Null } else { serde_json::from_str(&self.text).unwrap() }
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

impl Api {
    pub fn new(fake: &FakeForgejo, token: Option<&str>) -> Api {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Api { http, base: format!("{}/api/v1", fake.url()), token: token.map(String::from) }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) };
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("token {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Answer { status, headers, text: response.text().await.unwrap() }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// GET that must answer 200; the JSON.
    pub async fn ok(&self, path: &str) -> Value {
        let a = self.get(path).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json()
    }

    pub async fn send(&self, method: Method, path: &str, body: Value, expect: u16) -> Value {
        let a = self.call(method.clone(), path, Some(body)).await;
        assert_eq!(a.status, expect, "{method} {path}: {}", a.text);
        a.json()
    }
}
