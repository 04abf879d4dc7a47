/* corral._speedups: map's hot loop over a batch of yielded pairs, in one C pass each; and the files
 * below a local folder with their sizes, for the listing of many small input files.
 *
 * Optional: corral.speedups falls back to the same functions in Python when this module was not built
 * (no compiler, another interpreter) and says which it uses. Both must behave the same; tests compare
 * them on the same batches.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef _WIN32
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

/* Whether every item of the list is a tuple (or a subclass: a namedtuple) of two items. */
static int
all_pairs(PyObject *batch)
{
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
are_pairs(PyObject *module, PyObject *batch)
{
    if (!PyList_CheckExact(batch)) {
        PyErr_SetString(PyExc_TypeError, "are_pairs() takes a list");
        return NULL;
    }
    return PyBool_FromLong(all_pairs(batch));
}

/* Add one to counts[key]; -1 with an exception set when the key cannot be hashed (or its == raised). */
static int
add_one(PyObject *counts, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(counts, key); /* borrowed */
    PyObject *now;
    if (old == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        now = PyLong_FromLong(1);
    }
    else {
        Py_ssize_t had = PyLong_AsSsize_t(old);
        if (had == -1 && PyErr_Occurred()) {
            return -1;
        }
        now = PyLong_FromSsize_t(had + 1);
    }
    if (now == NULL) {
        return -1;
    }
    int failed = PyDict_SetItem(counts, key, now);
    Py_DECREF(now);
    return failed ? -1 : 0;
}

/* count_constant(counts, batch, value): when every item of the list ``batch`` is a (key, value) tuple
 * whose value is ``value`` (the same object, or of the same type and equal), add one to counts[key] for
 * each and return True; else return False with ``counts`` untouched. A key that cannot be hashed raises
 * the dict's TypeError with the keys before it counted (the caller fails the task and names the pair). */
static PyObject *
count_constant(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "count_constant() takes counts, batch and value");
        return NULL;
    }
    PyObject *counts = args[0], *batch = args[1], *value = args[2];
    if (!PyDict_CheckExact(counts) || !PyList_CheckExact(batch)) {
        PyErr_SetString(PyExc_TypeError, "count_constant() takes a dict and a list");
        return NULL;
    }
    if (!all_pairs(batch)) {
        Py_RETURN_FALSE;
    }
    /* Borrowed references throughout: the caller made ``batch`` and hands it to no one, its tuples cannot
     * change, and ``value`` is one of Python's shared constants (None, a bool, a small int), whose
     * comparison runs no Python code. */
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *found = PyTuple_GET_ITEM(PyList_GET_ITEM(batch, i), 1);
        if (found != value) {
            if (Py_TYPE(found) != Py_TYPE(value)) {
                Py_RETURN_FALSE;
            }
            int equal = PyObject_RichCompareBool(found, value, Py_EQ);
            if (equal < 0) {
                return NULL;
            }
            if (!equal) {
                Py_RETURN_FALSE;
            }
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (add_one(counts, PyTuple_GET_ITEM(PyList_GET_ITEM(batch, i), 0)) < 0) {
            return NULL;
        }
    }
    Py_RETURN_TRUE;
}

/* count_from(counts, iterator, value): count the keys of the (key, value) tuples ``iterator`` yields
 * while their value is ``value`` (as count_constant), pair by pair: no batch list, and each tuple is
 * freed while it is still in the CPU's cache. Returns None when the iterator is exhausted, or
 * ``(item,)`` for the first item that is not such a pair or whose key cannot be hashed (consumed, not
 * counted: the caller buffers it and the rest the usual way, and names a bad pair). An exception of the
 * iterator (the user's map) propagates. */
static PyObject *
count_from(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyIter_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "count_from() takes a dict, an iterator and a value");
        return NULL;
    }
    PyObject *counts = args[0], *iterator = args[1], *value = args[2];
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        int counted = 0;
        if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2) {
            PyObject *found = PyTuple_GET_ITEM(item, 1);
            int same = found == value;
            if (!same && Py_TYPE(found) == Py_TYPE(value)) {
                same = PyObject_RichCompareBool(found, value, Py_EQ);
                if (same < 0) {
                    PyErr_Clear(); /* the caller's checks look at it again */
                    same = 0;
                }
            }
            if (same) {
                if (add_one(counts, PyTuple_GET_ITEM(item, 0)) == 0) {
                    counted = 1;
                }
                else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                    PyErr_Clear(); /* an unhashable key: the caller names the pair */
                }
                else {
                    Py_DECREF(item);
                    return NULL;
                }
            }
        }
        if (!counted) {
            PyObject *odd = PyTuple_Pack(1, item);
            Py_DECREF(item);
            return odd;
        }
        Py_DECREF(item);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}


#ifndef _WIN32
/* scan_tree: every file below a local folder, the way corral.filesystems.fsspec lists one in Python
 * (names starting with "_" or "." skipped, links followed, a folder reached twice listed once, a broken
 * link or an entry removed meanwhile left out), walked without the GIL: the listing of 20,000 small
 * files is ~40 ms of stat calls, which then run beside the driver's own start-up (see prefetch_folders). */

typedef struct {
    char *data;
    size_t length, capacity;
} bytes_buffer;

typedef struct {
    size_t path;   /* offset of the file's path (relative to the top folder, NUL-terminated) in names */
    long long size, mtime_ns;
} file_entry;

typedef struct {
    bytes_buffer names;      /* relative paths, each NUL-terminated */
    file_entry *files;
    size_t nfiles, files_capacity;
    size_t *pending;         /* offsets in names of folders still to read (a stack) */
    size_t npending, pending_capacity;
    unsigned long long *seen; /* folders' (device, inode), hashed: open addressing, 0 is empty */
    size_t seen_capacity, nseen;
    int error;               /* errno of the first failure, 0 if none */
    size_t error_path;       /* offset in names of the path it concerns */
} tree_scan;

static int
grow(void **array, size_t *capacity, size_t needed, size_t item)
{
    if (needed <= *capacity) {
        return 0;
    }
    size_t capacity_now = *capacity ? *capacity : 64;
    while (capacity_now < needed) {
        capacity_now *= 2;
    }
    void *grown = realloc(*array, capacity_now * item);
    if (grown == NULL) {
        return -1;
    }
    *array = grown;
    *capacity = capacity_now;
    return 0;
}

/* Append a path (a folder's, then "/", then a name) to names; its offset, or (size_t)-1 if out of memory. */
static size_t
add_path(tree_scan *scan, size_t folder, const char *name)
{
    size_t folder_length = folder == (size_t)-1 ? 0 : strlen(scan->names.data + folder);
    size_t name_length = strlen(name);
    size_t needed = scan->names.length + folder_length + 1 + name_length + 1;
    if (grow((void **)&scan->names.data, &scan->names.capacity, needed, 1) < 0) {
        return (size_t)-1;
    }
    size_t at = scan->names.length;
    char *out = scan->names.data + at;
    if (folder_length) {
        memcpy(out, scan->names.data + folder, folder_length);
        out[folder_length] = '/';
        out += folder_length + 1;
    }
    memcpy(out, name, name_length + 1);
    scan->names.length = needed - (folder_length ? 0 : 1);
    return at;
}

/* Whether the folder (device, inode) is new (and now seen): 1, 0 if seen before, -1 out of memory. */
static int
first_visit(tree_scan *scan, unsigned long long device, unsigned long long inode)
{
    if ((scan->nseen + 1) * 2 > scan->seen_capacity) {
        size_t capacity = scan->seen_capacity ? scan->seen_capacity * 2 : 64;
        unsigned long long *table = calloc(capacity * 2, sizeof *table);
        if (table == NULL) {
            return -1;
        }
        for (size_t i = 0; i < scan->seen_capacity; i++) {
            unsigned long long *old = scan->seen + 2 * i;
            if (old[0] || old[1]) {
                size_t slot = (size_t)((old[0] * 1000003ULL) ^ old[1]) & (capacity - 1);
                while (table[2 * slot] || table[2 * slot + 1]) {
                    slot = (slot + 1) & (capacity - 1);
                }
                table[2 * slot] = old[0];
                table[2 * slot + 1] = old[1];
            }
        }
        free(scan->seen);
        scan->seen = table;
        scan->seen_capacity = capacity;
    }
    /* stored as (device + 1, inode): (0, 0) marks an empty slot */
    unsigned long long key0 = device + 1, key1 = inode;
    size_t slot = (size_t)((key0 * 1000003ULL) ^ key1) & (scan->seen_capacity - 1);
    while (scan->seen[2 * slot] || scan->seen[2 * slot + 1]) {
        if (scan->seen[2 * slot] == key0 && scan->seen[2 * slot + 1] == key1) {
            return 0;
        }
        slot = (slot + 1) & (scan->seen_capacity - 1);
    }
    scan->seen[2 * slot] = key0;
    scan->seen[2 * slot + 1] = key1;
    scan->nseen++;
    return 1;
}

/* Walk the tree below top_fd; on failure sets scan->error (ENOMEM for memory) and its path. */
static void
walk(tree_scan *scan, int top_fd)
{
    while (scan->npending && !scan->error) {
        size_t folder = scan->pending[--scan->npending];
        const char *relative = folder == (size_t)-1 ? "." : scan->names.data + folder;
        int fd = openat(top_fd, relative, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR) {  /* gone since it was listed */
                continue;
            }
            scan->error = errno;
            scan->error_path = folder;
            return;
        }
        DIR *entries = fdopendir(fd);
        if (entries == NULL) {
            scan->error = errno;
            scan->error_path = folder;
            close(fd);
            return;
        }
        for (;;) {
            errno = 0;
            struct dirent *entry = readdir(entries);
            if (entry == NULL) {
                if (errno != 0) {
                    scan->error = errno;
                    scan->error_path = folder;
                }
                break;
            }
            if (entry->d_name[0] == '_' || entry->d_name[0] == '.') {  /* "." and ".." too */
                continue;
            }
            struct stat st;
            if (fstatat(fd, entry->d_name, &st, 0) != 0) {
                if (errno == ENOENT) {  /* a broken link, or removed meanwhile */
                    continue;
                }
                scan->error = errno;
                scan->error_path = add_path(scan, folder, entry->d_name);
                break;
            }
            size_t path = add_path(scan, folder, entry->d_name);
            if (path == (size_t)-1) {
                scan->error = ENOMEM;
                break;
            }
            if (S_ISDIR(st.st_mode)) {
                int new_folder = first_visit(scan, (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
                if (new_folder < 0 || grow((void **)&scan->pending, &scan->pending_capacity, scan->npending + 1,
                                           sizeof *scan->pending) < 0) {
                    scan->error = ENOMEM;
                    break;
                }
                if (new_folder) {
                    scan->pending[scan->npending++] = path;
                }
                continue;
            }
            if (grow((void **)&scan->files, &scan->files_capacity, scan->nfiles + 1, sizeof *scan->files) < 0) {
                scan->error = ENOMEM;
                break;
            }
            file_entry *file = &scan->files[scan->nfiles++];
            file->path = path;
            file->size = (long long)st.st_size;
            file->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
        }
        closedir(entries);
    }
}

/* scan_tree(path) -> (device, inode, [(relative path, size, mtime_ns), ...]): every file below the
 * folder ``path`` (in no particular order), its paths relative to it; the folder's (device, inode) tells
 * which folder was read, however its name is spelled. An OSError names the folder or entry it concerns. */
static PyObject *
scan_tree(PyObject *module, PyObject *arg)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path)) {
        return NULL;
    }
    tree_scan scan = {0};
    struct stat top;
    int top_fd, failed_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    top_fd = open(PyBytes_AS_STRING(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (top_fd < 0 || fstat(top_fd, &top) != 0) {
        failed_errno = errno;
    }
    else if (first_visit(&scan, (unsigned long long)top.st_dev, (unsigned long long)top.st_ino) < 0
             || grow((void **)&scan.pending, &scan.pending_capacity, 1, sizeof *scan.pending) < 0) {
        failed_errno = ENOMEM;
    }
    else {
        scan.pending[scan.npending++] = (size_t)-1;  /* the top folder itself */
        walk(&scan, top_fd);
    }
    if (top_fd >= 0) {
        close(top_fd);
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL, *files = NULL;
    if (failed_errno || scan.error) {
        int error = failed_errno ? failed_errno : scan.error;
        if (error == ENOMEM) {
            PyErr_NoMemory();
        }
        else if (failed_errno || scan.error_path == (size_t)-1) {  /* the folder itself */
            errno = error;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
        }
        else {
            PyObject *relative = PyUnicode_DecodeFSDefault(scan.names.data + scan.error_path);
            PyObject *full = relative ? PyUnicode_FromFormat("%U/%U", arg, relative) : NULL;
            Py_XDECREF(relative);
            if (full != NULL) {
                errno = error;
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, full);
                Py_DECREF(full);
            }
        }
        goto done;
    }
    files = PyList_New((Py_ssize_t)scan.nfiles);
    if (files == NULL) {
        goto done;
    }
    for (size_t i = 0; i < scan.nfiles; i++) {
        file_entry *file = &scan.files[i];
        PyObject *item = Py_BuildValue("(NLL)", PyUnicode_DecodeFSDefault(scan.names.data + file->path),
                                       file->size, file->mtime_ns);
        if (item == NULL) {
            Py_CLEAR(files);
            goto done;
        }
        PyList_SET_ITEM(files, (Py_ssize_t)i, item);
    }
    result = Py_BuildValue("(KKN)", (unsigned long long)top.st_dev, (unsigned long long)top.st_ino, files);
done:
    free(scan.names.data);
    free(scan.files);
    free(scan.pending);
    free(scan.seen);
    Py_DECREF(path);
    return result;
}
/* file_infos(prefix, scanned, cls) -> [cls]: the FileInfo of each (relative path, size, mtime_ns) of
 * scan_tree: url prefix + path, the size, the mtime as its version (a string). Made as object.__new__
 * then object.__setattr__ (what a frozen dataclass's __init__ does), in one C loop: 20,000 files
 * cost ~18 ms through FileInfo's __init__. */
static PyObject *
file_infos(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyList_Check(args[1]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "file_infos() takes a prefix, a list and a class");
        return NULL;
    }
    PyObject *prefix = args[0], *scanned = args[1];
    PyTypeObject *cls = (PyTypeObject *)args[2];
    static PyObject *url_name, *size_name, *version_name;
    if (url_name == NULL) {
        url_name = PyUnicode_InternFromString("url");
        size_name = PyUnicode_InternFromString("size");
        version_name = PyUnicode_InternFromString("version");
        if (url_name == NULL || size_name == NULL || version_name == NULL) {
            return NULL;
        }
    }
    Py_ssize_t n = PyList_GET_SIZE(scanned);
    PyObject *found = PyList_New(n);
    if (found == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(scanned, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "file_infos() takes (path, size, mtime_ns) tuples");
            goto failed;
        }
        PyObject *info = cls->tp_alloc(cls, 0);
        if (info == NULL) {
            goto failed;
        }
        PyList_SET_ITEM(found, i, info);
        PyObject *url = PyUnicode_Concat(prefix, PyTuple_GET_ITEM(item, 0));
        PyObject *version = url ? PyObject_Str(PyTuple_GET_ITEM(item, 2)) : NULL;
        int failed = url == NULL || version == NULL
            || PyObject_GenericSetAttr(info, url_name, url) < 0
            || PyObject_GenericSetAttr(info, size_name, PyTuple_GET_ITEM(item, 1)) < 0
            || PyObject_GenericSetAttr(info, version_name, version) < 0;
        Py_XDECREF(url);
        Py_XDECREF(version);
        if (failed) {
            goto failed;
        }
    }
    return found;
failed:
    Py_DECREF(found);
    return NULL;
}

/* symbolic_links(path) -> [name]: the names of the symbolic links in a folder (its entries' types, as
 * readdir gives them: no stat per entry), read without the GIL. An OSError names the folder. */
static PyObject *
symbolic_links(PyObject *module, PyObject *arg)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path)) {
        return NULL;
    }
    tree_scan found = {0};  /* its names buffer: the links' names, each NUL-terminated */
    size_t count = 0;
    int failed_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    DIR *folder = opendir(PyBytes_AS_STRING(path));
    if (folder == NULL) {
        failed_errno = errno;
    }
    else {
        int fd = dirfd(folder);
        for (;;) {
            errno = 0;
            struct dirent *entry = readdir(folder);
            if (entry == NULL) {
                failed_errno = errno;
                break;
            }
            int link = entry->d_type == DT_LNK;
            if (entry->d_type == DT_UNKNOWN) {  /* a filesystem that does not say: ask */
                struct stat st;
                link = fstatat(fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
            }
            if (link) {
                if (add_path(&found, (size_t)-1, entry->d_name) == (size_t)-1) {
                    failed_errno = ENOMEM;
                    break;
                }
                count++;
            }
        }
        closedir(folder);
    }
    Py_END_ALLOW_THREADS
    PyObject *names = NULL;
    if (failed_errno == ENOMEM) {
        PyErr_NoMemory();
    }
    else if (failed_errno) {
        errno = failed_errno;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    }
    else if ((names = PyList_New((Py_ssize_t)count)) != NULL) {
        const char *name = found.names.data;
        for (size_t i = 0; i < count; i++) {
            PyObject *text = PyUnicode_DecodeFSDefault(name);
            if (text == NULL) {
                Py_CLEAR(names);
                break;
            }
            PyList_SET_ITEM(names, (Py_ssize_t)i, text);
            name += strlen(name) + 1;
        }
    }
    free(found.names.data);
    Py_DECREF(path);
    return names;
}
#endif

#ifdef __linux__
#include <sys/prctl.h>

/* die_with_parent(signal): the kernel sends this process ``signal`` when its parent ends
 * (PR_SET_PDEATHSIG); a worker process sets it as it starts, without importing ctypes (~6 ms). */
static PyObject *
die_with_parent(PyObject *self, PyObject *arg)
{
    long signal_number = PyLong_AsLong(arg);
    if (signal_number == -1 && PyErr_Occurred())
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signal_number, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}
#endif

static PyMethodDef speedups_methods[] = {
    {"are_pairs", (PyCFunction)are_pairs, METH_O,
     "are_pairs(batch) -> bool: every item of the list is a tuple of two"},
    {"count_constant", (PyCFunction)(void (*)(void))count_constant, METH_FASTCALL,
     "count_constant(counts, batch, value) -> bool: count the keys of a batch of (key, value) whose "
     "values all equal value (same type), or leave counts alone and return False"},
    {"count_from", (PyCFunction)(void (*)(void))count_from, METH_FASTCALL,
     "count_from(counts, iterator, value) -> None or (item,): count the keys of the pairs the iterator "
     "yields while their value is value; the first other item, consumed, in a tuple of one"},
#ifndef _WIN32
    {"scan_tree", (PyCFunction)scan_tree, METH_O,
     "scan_tree(path) -> (device, inode, [(relative path, size, mtime_ns)]): every file below a folder, "
     "names _* and .* skipped, links followed (each folder once), broken ones left out; without the GIL"},
    {"file_infos", (PyCFunction)(void (*)(void))file_infos, METH_FASTCALL,
     "file_infos(prefix, scanned, cls) -> [cls]: scan_tree's files as FileInfo (url prefix + path, size, "
     "version str(mtime_ns))"},
    {"symbolic_links", (PyCFunction)symbolic_links, METH_O,
     "symbolic_links(path) -> [name]: the names of a folder's symbolic links (no stat per entry)"},
#endif
#ifdef __linux__
    {"die_with_parent", (PyCFunction)die_with_parent, METH_O,
     "die_with_parent(signal): the kernel sends this process signal when its parent ends (PR_SET_PDEATHSIG)"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "corral._speedups", "map's hot loop over a batch of pairs, in C", -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
