/* corral._speedups: map's hot loop over a batch of yielded pairs, in one C pass each.
 *
 * Optional: corral.speedups falls back to the same functions in Python when this module was not built
 * (no compiler, another interpreter) and says which it uses. Both must behave the same; tests compare
 * them on the same batches.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef speedups_methods[] = {
    {"are_pairs", (PyCFunction)are_pairs, METH_O,
     "are_pairs(batch) -> bool: every item of the list is a tuple of two"},
    {"count_constant", (PyCFunction)(void (*)(void))count_constant, METH_FASTCALL,
     "count_constant(counts, batch, value) -> bool: count the keys of a batch of (key, value) whose "
     "values all equal value (same type), or leave counts alone and return False"},
    {"count_from", (PyCFunction)(void (*)(void))count_from, METH_FASTCALL,
     "count_from(counts, iterator, value) -> None or (item,): count the keys of the pairs the iterator "
     "yields while their value is value; the first other item, consumed, in a tuple of one"},
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
