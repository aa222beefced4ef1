"""Values that are views: another value's buffer read with other extents and strides.

Every value a backend materializes is C-contiguous. A `reshape` of one never moves an
element, and `permute` and `slice` only change which element sits where: each can be read
from its operand's buffer with new strides (and, for a slice, an offset) instead of copying
it. The memory plan decides which are views (`plan_memory`: a view shares its operand's buffer
and keeps it busy until its own last read); this module says what a view's layout is and
which ops may read a strided one.

Strides are in elements and symbolic: a `Stride` is a coefficient times a product of
symbolic dims (`(768, ("N",))` is 768*N), so one layout holds for every batch. A reshape of a
strided value is a view only where NumPy's would be (the merged axes are contiguous with
each other; `reshaped` returns None otherwise, and the plan copies).

    %1 = dense(...) : f32[T,N,768]             C-contiguous: strides (768N, 768, 1)
    %2 = reshape[shape=(T, N, 3, 4, 64)](%1)   (768N, 768, 256, 64, 1)
    %3 = slice[axis=2, start=1, stop=2](%2)    offset 256, strides unchanged
    %4 = permute[perm=(1, 2, 3, 0, 4)](%3)     [N, 1, 4, T, 64]: (768, 256, 64, 768N, 1)

`attention` reads q, k and v as such views (its kernel takes strides), so an exported
transformer's head split is not copied three times before every attention. It also writes
its result with any strides: where a permute is its only reader, the permute's buffer is
where attention writes, in the permuted order (`written_through`), and the permute copies
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Dim, Graph, Node
from .ops import attrs_of

Stride = tuple[int, tuple[str, ...]]  # coefficient, symbolic dims (sorted)
VIEW_OPS = ("reshape", "permute", "slice")
STRIDED_READERS = {"attention": 3}  # op -> how many leading operands it reads strided
STRIDED_WRITERS = ("attention",)  # ops that can write their result with any strides


def times(stride: Stride, extent: Dim) -> Stride:
    coef, dims = stride
    if isinstance(extent, int):
        return (coef * extent, dims) if coef * extent else (0, ())
    return coef, tuple(sorted((*dims, extent)))


def contiguous(shape: tuple[Dim, ...]) -> list[Stride]:
    strides: list[Stride] = []
    stride: Stride = (1, ())
    for extent in reversed(shape):
        strides.insert(0, stride)
        stride = times(stride, extent)
    return strides


def _product(shape) -> Stride:
    total: Stride = (1, ())
    for extent in shape:
        total = times(total, extent)
    return total


@dataclass(frozen=True)
class Layout:
    """Where a value's elements are: buffer[offset + sum(index[a] * strides[a])], the
    buffer being `root`'s (a value the backend materializes, C-contiguous). The offset is a
    sum of strides (`Stride` terms)."""

    root: int
    offset: tuple[Stride, ...]
    strides: tuple[Stride, ...]

    def is_contiguous(self, shape: tuple[Dim, ...]) -> bool:
        """C-contiguous from offset 0 (axes of extent 1 may have any stride)."""
        want = contiguous(shape)
        same = all(s == w for s, w, d in zip(self.strides, want, shape, strict=True) if d != 1)
        return same and not self.offset


def reshaped(shape: tuple[Dim, ...], strides: list[Stride], new: tuple[Dim, ...]):
    """The strides of `new` reading the same elements as (shape, strides), or None where the
    axes it merges are not contiguous with each other (NumPy's no-copy reshape, symbolic)."""
    old = [(d, s) for d, s in zip(shape, strides, strict=True) if d != 1]
    result: list[Stride | None] = [None] * len(new)
    targets = [a for a, d in enumerate(new) if d != 1]
    i = j = 0
    while i < len(old) and j < len(targets):
        group_old, group_new = [old[i]], [targets[j]]
        size_old, size_new = _product([old[i][0]]), _product([new[targets[j]]])
        while size_old != size_new:
            if _less(size_old, size_new):
                i += 1
                if i == len(old):
                    return None
                group_old.append(old[i])
                size_old = times(size_old, old[i][0])
            else:
                j += 1
                if j == len(targets):
                    return None
                group_new.append(targets[j])
                size_new = times(size_new, new[targets[j]])
        for (_, outer), (extent, inner) in zip(group_old, group_old[1:], strict=False):
            if outer != times(inner, extent):
                return None  # the merged axes are not contiguous with each other
        stride = group_old[-1][1]
        for axis in reversed(group_new):
            result[axis] = stride
            stride = times(stride, new[axis])
        i, j = i + 1, j + 1
    if i != len(old) or j != len(targets):
        return None
    return [s if s is not None else (0, ()) for s in result]


def _less(a: Stride, b: Stride) -> bool:
    """a < b as sizes, where one divides the other (a group is still being filled)."""
    return (len(a[1]), a[0]) < (len(b[1]), b[0])


def step(node: Node, shape: tuple[Dim, ...], layout: Layout) -> Layout | None:
    """The layout of view op `node`'s result given its operand's (shape, layout)."""
    attrs, strides = attrs_of(node), list(layout.strides)
    if node.op == "permute":
        return Layout(layout.root, layout.offset, tuple(strides[p] for p in attrs["perm"]))
    if node.op == "slice":
        axis = attrs["axis"] % len(shape)
        start = times(strides[axis], attrs["start"])
        strides[axis] = times(strides[axis], attrs["step"])
        offset = (*layout.offset, start) if start[0] else layout.offset
        return Layout(layout.root, offset, tuple(strides))
    new = reshaped(shape, strides, node.type.shape)
    return None if new is None else Layout(layout.root, layout.offset, tuple(new))


def reads_strided(user: Node, value: int) -> bool:
    """`user` reads `value` only as operands it takes with any strides (attention's q, k,
    v)."""
    reads = STRIDED_READERS.get(user.op, 0)
    return bool(reads) and all(i < reads for i, x in enumerate(user.inputs) if x == value)


def shares_buffer(g: Graph, node: Node) -> bool:
    """The plan made `node` a view: a view op in its operand's buffer."""
    if node.op not in VIEW_OPS or node.buffer is None:
        return False
    return g[node.inputs[0]].buffer == node.buffer


def written_through(g: Graph, node: Node) -> Node | None:
    """The permute whose buffer `node` writes its result into, in the permuted order (so
    the permute copies nothing): `node` is an op that writes strided, the permute its only
    reader, and the plan put both in one buffer. The permute's value is then the layout's
    root, and `node` a strided view of it."""
    if node.op not in STRIDED_WRITERS or node.buffer is None:
        return None
    users = g.users(node.id)
    if len(users) != 1 or users[0].op != "permute" or users[0].buffer != node.buffer:
        return None
    return users[0]


def _written_layout(permute: Node) -> Layout:
    """The strides of the permute's operand inside the permute's buffer (its result,
    C-contiguous)."""
    perm = attrs_of(permute)["perm"]
    strides = contiguous(permute.type.shape)
    return Layout(permute.id, (), tuple(strides[perm.index(a)] for a in range(len(perm))))


def layout(g: Graph, node_id: int) -> Layout:
    """Where the value lives: its own buffer, or (a planned view) its root's, read with
    these strides. Raises ValueError for a planned view no strides can express."""
    node = g[node_id]
    permute = written_through(g, node)
    if permute is not None:
        return _written_layout(permute)
    if not shares_buffer(g, node):
        return Layout(node_id, (), tuple(contiguous(node.type.shape)))
    source = g[node.inputs[0]]
    if written_through(g, source) is node:
        return Layout(node_id, (), tuple(contiguous(node.type.shape)))  # the root itself
    found = step(node, source.type.shape, layout(g, source.id))
    if found is None:
        raise ValueError(f"{node.op} %{node_id} cannot read its operand's buffer with strides")
    return found


def regrouped(shape: tuple[Dim, ...], layout: Layout) -> list[Stride] | None:
    """The strides of the value read as [A, B, T, d] (A the product of the axes before the
    last three, B the third from last): how attention's kernel reads its operands; None
    where the axes A merges are not contiguous with each other."""
    zero: Stride = (0, ())
    strides = list(layout.strides)
    if len(shape) < 3:
        return [zero] * (4 - len(shape)) + strides
    front = [(d, s) for d, s in zip(shape[:-3], strides[:-3], strict=True) if d != 1]
    for (_, outer), (extent, inner) in zip(front, front[1:], strict=False):
        if outer != times(inner, extent):
            return None
    return [front[-1][1] if front else zero, *strides[-3:]]


def plan_views(g: Graph, plannable: set[int]) -> set[int]:
    """The view ops the memory plan may make views: reshapes of any value it plans,
    permutes, slices and reshapes whose result is strided when every reader takes strides
    (attention's q, k, v, or another such view) and attention can regroup them, and a
    permute that is an attention's only reader (attention writes into its buffer)."""
    users = g.successors()
    chosen: set[int] = set()
    layouts: dict[int, Layout] = {}
    for node in g:  # topological order: an operand's layout is known first
        layouts[node.id] = Layout(node.id, (), tuple(contiguous(node.type.shape)))
        if node.op not in VIEW_OPS or node.id not in plannable:
            continue
        source = node.inputs[0]
        if source not in plannable:
            continue
        readers = users.get(source, [])
        if node.op == "permute" and g[source].op in STRIDED_WRITERS and readers == [node.id]:
            written = _written_layout(node)
            if regrouped(g[source].type.shape, written) is not None:
                chosen.add(node.id)  # the writer puts its result in this permute's order
            continue
        found = step(node, g[source].type.shape, layouts[source])
        if found is None:
            continue
        strided = not found.is_contiguous(node.type.shape)
        if strided and not _strided_ok(g, node, found, users, plannable):
            continue
        chosen.add(node.id)
        layouts[node.id] = found
    return chosen


def _strided_ok(g: Graph, node: Node, found: Layout, users: dict[int, list[int]],
                plannable: set[int]) -> bool:  # fmt: skip
    """Every reader of the strided value takes strides: attention (regrouped), or a view op
    the plan can make a view in turn, whose readers take strides (a view op left to copy
    would read a strided operand, which the copying kernels do not)."""
    for u in users.get(node.id, []):
        user = g[u]
        if reads_strided(user, node.id):
            if regrouped(node.type.shape, found) is None:
                return False
            continue
        if user.op in VIEW_OPS and user.id in plannable:
            after = step(user, node.type.shape, found)
            if after is None:
                return False
            strided = not after.is_contiguous(user.type.shape)
            if strided and not _strided_ok(g, user, after, users, plannable):
                return False
            continue
        return False
    return True


def feeds_strided_readers(g: Graph, node_id: int) -> bool:
    """Every read of the value ends, through view ops, in an operand that takes strides
    (attention's q, k, v): a value the plan can leave in a larger buffer it shares (whether
    each view's strides exist is the plan's to check)."""
    users = g.users(node_id)
    if not users or node_id in g.outputs:
        return False
    for user in users:
        if reads_strided(user, node_id):
            continue
        if user.op in VIEW_OPS and feeds_strided_readers(g, user.id):
            continue
        return False
    return True
