//! The head's embedded database (redb): jobs and the key-value store survive a restart.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

pub(crate) struct Db {
    db: Database,
}

fn e(x: impl std::fmt::Display) -> String {
    format!("head database: {x}")
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, String> {
        let db = Database::create(path).map_err(e)?;
        let w = db.begin_write().map_err(e)?;
        w.open_table(JOBS).map_err(e)?;
        w.open_table(KV).map_err(e)?;
        w.open_table(NODES).map_err(e)?;
        w.commit().map_err(e)?;
        Ok(Db { db })
    }

    fn put(&self, t: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), String> {
        let w = self.db.begin_write().map_err(e)?;
        w.open_table(t).map_err(e)?.insert(key, value).map_err(e)?;
        w.commit().map_err(e)
    }

    fn get(&self, t: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>, String> {
        let r = self.db.begin_read().map_err(e)?;
        let table = r.open_table(t).map_err(e)?;
        Ok(table.get(key).map_err(e)?.map(|v| v.value().to_vec()))
    }

    fn delete(&self, t: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, String> {
        let w = self.db.begin_write().map_err(e)?;
        let existed = w.open_table(t).map_err(e)?.remove(key).map_err(e)?.is_some();
        w.commit().map_err(e)?;
        Ok(existed)
    }

    fn all(&self, t: TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, String> {
        let r = self.db.begin_read().map_err(e)?;
        let table = r.open_table(t).map_err(e)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn put_job(&self, id: &str, json: &[u8]) -> Result<(), String> {
        self.put(JOBS, id, json)
    }
    pub fn delete_job(&self, id: &str) -> Result<bool, String> {
        self.delete(JOBS, id)
    }
    pub fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.all(JOBS)
    }
    pub fn put_node(&self, id: &str, json: &[u8]) -> Result<(), String> {
        self.put(NODES, id, json)
    }
    pub fn nodes(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.all(NODES)
    }
    pub fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.put(KV, key, value)
    }
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.get(KV, key)
    }
    pub fn kv_delete(&self, key: &str) -> Result<bool, String> {
        self.delete(KV, key)
    }
    pub fn kv_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self.all(KV)?.into_iter().map(|(k, _)| k).filter(|k| k.starts_with(prefix)).collect())
    }
}
