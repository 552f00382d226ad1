//! The objects, their resource versions, and the history watches resume
//! from. History is kept up to a limit (and can be dropped on demand): a
//! watch from a resource version older than the history gets 410 Gone, as
//! with etcd compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::resources::ResourceType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: u64,
    pub event: EventType,
    pub resource: &'static ResourceType,
    /// The object after the change (for a deletion, its last state).
    pub object: Value,
    /// The object before the change, so a selective watch can tell an
    /// object that left its selection from one that changed within it.
    pub previous: Option<Value>,
}

type ObjectKey = (&'static str, String, String);

/// Why a change was refused, as the API server's Status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

#[derive(Debug)]
pub struct Store {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watches may resume from this revision or later.
    oldest: u64,
    history_limit: usize,
    next_uid: u64,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            revision: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 1,
            history_limit,
            next_uid: 1,
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// Forgets all history: watches from any earlier revision get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.revision;
    }

    /// Objects of `resource` (in `namespace`, if given), in key order.
    pub fn list<'a>(
        &'a self,
        resource: &'a ResourceType,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((plural, ns, _), _)| {
                *plural == resource.plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, object)| object)
    }

    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource.plural, namespace.to_string(), name.to_string()))
    }

    /// Changes after `revision`, oldest first; `None` when history no
    /// longer reaches back that far.
    pub fn since(&self, revision: u64) -> Option<Vec<Arc<Change>>> {
        if revision < self.oldest {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|change| change.revision > revision)
                .cloned()
                .collect(),
        )
    }

    /// Creates an object; it must not exist.
    pub fn create(&mut self, mut object: Value) -> Result<Arc<Change>, Refusal> {
        let (resource, key) = identify(&object)?;
        if self.objects.contains_key(&key) {
            return Err(Refusal::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", resource.plural, key.2),
            ));
        }
        let uid = format!("00000000-0000-0000-0000-{:012}", self.next_uid);
        self.next_uid += 1;
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["generation"] = json!(1);
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        Ok(self.record(EventType::Added, resource, key, object, None))
    }

    /// Replaces an object; it must exist, and a resource version in the new
    /// one must be the current one (optimistic concurrency).
    pub fn update(&mut self, mut object: Value) -> Result<Arc<Change>, Refusal> {
        let (resource, key) = identify(&object)?;
        let Some(current) = self.objects.get(&key) else {
            return Err(not_found(resource, &key.2));
        };
        let expected = &object["metadata"]["resourceVersion"];
        if !expected.is_null() && *expected != current["metadata"]["resourceVersion"] {
            return Err(Refusal::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural, key.2
                ),
            ));
        }
        for field in ["uid", "creationTimestamp"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation + 1);
        let previous = Some(current.clone());
        Ok(self.record(EventType::Modified, resource, key, object, previous))
    }

    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Change>, Refusal> {
        let key = (resource.plural, namespace.to_string(), name.to_string());
        let Some(object) = self.objects.get(&key).cloned() else {
            return Err(not_found(resource, name));
        };
        let previous = Some(object.clone());
        Ok(self.record(EventType::Deleted, resource, key, object, previous))
    }

    fn record(
        &mut self,
        event: EventType,
        resource: &'static ResourceType,
        key: ObjectKey,
        mut object: Value,
        previous: Option<Value>,
    ) -> Arc<Change> {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        if event == EventType::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        let change = Arc::new(Change {
            revision: self.revision,
            event,
            resource,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.revision;
            }
        }
        change
    }
}

fn not_found(resource: &ResourceType, name: &str) -> Refusal {
    Refusal::new(
        404,
        "NotFound",
        format!("{} {name:?} not found", resource.plural),
    )
}

/// The resource type and key of an object, from its own fields.
fn identify(object: &Value) -> Result<(&'static ResourceType, ObjectKey), Refusal> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let (api_version, kind) = (text(&object["apiVersion"]), text(&object["kind"]));
    let resource = ResourceType::by_kind(&api_version, &kind).ok_or_else(|| {
        Refusal::new(
            400,
            "BadRequest",
            format!("no kind {kind:?} is registered for version {api_version:?}"),
        )
    })?;
    let name = text(&object["metadata"]["name"]);
    if name.is_empty() {
        return Err(Refusal::new(
            422,
            "Invalid",
            "metadata.name: Required value",
        ));
    }
    let namespace = if resource.namespaced {
        let namespace = text(&object["metadata"]["namespace"]);
        if namespace.is_empty() {
            return Err(Refusal::new(
                422,
                "Invalid",
                "metadata.namespace: Required value",
            ));
        }
        namespace
    } else {
        String::new()
    };
    Ok((resource, (resource.plural, namespace, name)))
}
