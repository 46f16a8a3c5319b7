//! What the wgpu backend keeps between op calls so that a warm call allocates nothing on the
//! device: the params buffer, a pool of scratch buffers, cached bind groups and the pass timer.
//!
//! # Why reuse is safe
//!
//! Every op call records its work into one command encoder and submits it on the device's one
//! queue; wgpu executes submissions (and `Queue::write_buffer`, which runs before the next
//! submission's command buffers) in queue order, and its resource tracker puts the barriers
//! between a use in one submission and a use in a later one. So:
//!
//! * **Params**: a call writes its dispatches' params into the shared params buffer (one
//!   256-byte slot per dispatch, bound with a dynamic offset) with `Queue::write_buffer` and
//!   submits while holding [`Reuse::params`]. The write is ordered after every earlier
//!   submission (which has read its own params by then) and before this call's, and no other
//!   call can write in between, since the lock covers write and submit.
//! * **Scratch**: a call takes a buffer out of the pool ([`Pool::take`]); the guard returns it
//!   when it drops, which is after the call submitted (the dispatches borrow it until then). A
//!   buffer in the pool is therefore never owned by a call that has yet to submit, and the next
//!   call that takes it submits later on the same queue, so its accesses are ordered after
//!   those of every earlier user, in flight or not. Two calls running at once (threads) never
//!   hold the same buffer. Scratch contents are not cleared: kernels write every scratch word
//!   before reading it.
//! * **Bind groups** are keyed by pipeline (kernel, spec), the params buffer and the identity of
//!   every bound buffer; a cached group keeps its buffers alive, so dropping a [`super::WgpuBuffer`]
//!   or a pooled buffer evicts the groups that name it ([`GroupCache::evict`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pipeline::{Kernel, Spec};
use super::Buf;

/// Bytes of one params slot: every params struct fits, and dynamic offsets must be multiples of
/// `min_uniform_buffer_offset_alignment` (at most 256).
pub(super) const PARAM_SLOT: u64 = 256;

/// Bind groups kept at most; beyond this the cache starts over.
const MAX_GROUPS: usize = 4096;

/// Idle pooled buffers kept per size class.
const MAX_IDLE: usize = 4;

/// Timestamp pairs per query set of the pass timer.
pub(super) const TIMER_PAIRS: u32 = 128;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A buffer of the backend with an identity for the bind group cache.
#[derive(Debug)]
pub(super) struct Tracked {
    pub buffer: wgpu::Buffer,
    pub id: u64,
}

impl Tracked {
    pub fn new(buffer: wgpu::Buffer) -> Self {
        Tracked { buffer, id: next_id() }
    }
    pub fn buf(&self) -> Buf<'_> {
        Buf { raw: &self.buffer, id: self.id }
    }
}

/// The params buffer: `slots` slots of [`PARAM_SLOT`] bytes, grown (replaced) when a call has
/// more dispatches.
pub(super) struct Params {
    pub buffer: Tracked,
    pub slots: u64,
}

/// Key of a cached bind group: pipeline, params buffer and bound buffers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    pub kernel: Kernel,
    pub spec: Spec,
    pub params: u64,
    pub buffers: Vec<u64>,
}

/// Cached bind groups.
#[derive(Default)]
pub(crate) struct GroupCache {
    map: Mutex<HashMap<GroupKey, wgpu::BindGroup>>,
}

impl GroupCache {
    /// The cached group of `key`, or the one `make` builds (then cached).
    pub(super) fn get(&self, key: GroupKey, make: impl FnOnce() -> wgpu::BindGroup) -> wgpu::BindGroup {
        let mut map = lock(&self.map);
        if let Some(g) = map.get(&key) {
            return g.clone();
        }
        if map.len() >= MAX_GROUPS {
            map.clear();
        }
        let g = make();
        map.insert(key, g.clone());
        g
    }

    /// Cached groups.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Drops every cached group.
    pub(super) fn clear(&self) {
        lock(&self.map).clear();
    }

    /// Drops every group that binds the buffer `id` (so that its memory can go).
    pub(crate) fn evict(&self, id: u64) {
        lock(&self.map).retain(|k, _| k.params != id && !k.buffers.contains(&id));
    }
}

/// Idle scratch buffers by (size, usage).
pub(super) struct Pool {
    idle: Mutex<HashMap<(u64, wgpu::BufferUsages), Vec<Tracked>>>,
    groups: Arc<GroupCache>,
}

impl Pool {
    /// An idle buffer of exactly `size` bytes and `usage`, now owned by the caller.
    pub fn take(&self, size: u64, usage: wgpu::BufferUsages) -> Option<Scratch<'_>> {
        let t = lock(&self.idle).get_mut(&(size, usage))?.pop()?;
        Some(Scratch { buffer: Some(t), usage, pool: self })
    }

    /// A new buffer of the pool, owned by the caller.
    pub fn wrap(&self, buffer: wgpu::Buffer, size: u64, usage: wgpu::BufferUsages) -> Scratch<'_> {
        debug_assert_eq!(buffer.size(), size);
        Scratch { buffer: Some(Tracked::new(buffer)), usage, pool: self }
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> u64 {
        lock(&self.idle).iter().map(|((size, _), v)| size * v.len() as u64).sum()
    }

    /// Frees every idle buffer (and its bind groups).
    pub fn clear(&self, groups: &GroupCache) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        for t in idle.into_values().flatten() {
            groups.evict(t.id);
        }
    }

    fn give_back(&self, t: Tracked, usage: wgpu::BufferUsages) {
        let mut idle = lock(&self.idle);
        let list = idle.entry((t.buffer.size(), usage)).or_default();
        if list.len() < MAX_IDLE {
            list.push(t);
            return;
        }
        drop(idle);
        self.groups.evict(t.id);
    }
}

/// A scratch buffer owned by one op call; back to the pool on drop (after the call submitted).
pub(super) struct Scratch<'a> {
    buffer: Option<Tracked>,
    usage: wgpu::BufferUsages,
    pool: &'a Pool,
}

impl Scratch<'_> {
    pub fn buf(&self) -> Buf<'_> {
        let t = self.buffer.as_ref().expect("scratch present until dropped");
        t.buf()
    }
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer.as_ref().expect("scratch present until dropped").buffer
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.buffer.take() {
            self.pool.give_back(t, self.usage);
        }
    }
}

/// Query sets of a running [`crate::Backend::time`]: one timestamp pair per compute pass (and
/// per copy) recorded while it runs.
pub(super) struct PassTimer {
    pub sets: Vec<wgpu::QuerySet>,
    pub pairs: u32,
}

impl PassTimer {
    /// The query set and first index of the next timestamp pair, adding a set when full.
    pub fn next_pair(&mut self, device: &wgpu::Device) -> (wgpu::QuerySet, u32) {
        let set = (self.pairs / TIMER_PAIRS) as usize;
        if set == self.sets.len() {
            self.sets.push(device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kvsparse pass timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * TIMER_PAIRS,
            }));
        }
        let index = 2 * (self.pairs % TIMER_PAIRS);
        self.pairs += 1;
        (self.sets[set].clone(), index)
    }
}

/// Everything reused across calls.
pub(super) struct Reuse {
    /// Held from writing a call's params to its submission.
    pub params: Mutex<Params>,
    pub pool: Pool,
    pub groups: Arc<GroupCache>,
    /// `Some` while `time` measures passes.
    pub timer: Mutex<Option<PassTimer>>,
    /// Query sets of earlier timings, reused.
    pub spare_sets: Mutex<Vec<wgpu::QuerySet>>,
}

impl Reuse {
    pub fn new(device: &wgpu::Device) -> Self {
        let groups = Arc::new(GroupCache::default());
        Reuse {
            params: Mutex::new(Params { buffer: Tracked::new(params_buffer(device, 16)), slots: 16 }),
            pool: Pool { idle: Mutex::new(HashMap::new()), groups: groups.clone() },
            groups,
            timer: Mutex::new(None),
            spare_sets: Mutex::new(Vec::new()),
        }
    }

    /// The params buffer, locked, with at least `slots` slots.
    pub fn params(&self, device: &wgpu::Device, slots: u64) -> MutexGuard<'_, Params> {
        let mut p = lock(&self.params);
        if p.slots < slots {
            let n = slots.next_power_of_two();
            let old = std::mem::replace(&mut p.buffer, Tracked::new(params_buffer(device, n)));
            p.slots = n;
            self.groups.evict(old.id);
        }
        p
    }

    pub fn timer(&self) -> MutexGuard<'_, Option<PassTimer>> {
        lock(&self.timer)
    }

    pub fn spare_sets(&self) -> MutexGuard<'_, Vec<wgpu::QuerySet>> {
        lock(&self.spare_sets)
    }
}

fn params_buffer(device: &wgpu::Device, slots: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kvsparse params"),
        size: slots * PARAM_SLOT,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}
