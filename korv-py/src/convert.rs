//! JSON values to Python objects and back, with the types and errors of the
//! `json` module: `dict`, `list` (and `tuple` going out), `str`, `int`,
//! `float`, `bool` and `None`; anything else is a `TypeError` ("Object of
//! type set is not JSON serializable"), a float that is not finite or an
//! integer beyond 64 bits a `ValueError`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Deeper nesting going out is refused: it is almost always a reference cycle
/// (`json.dumps` says "Circular reference detected").
const MAX_DEPTH: usize = 512;

/// A JSON value as a Python object.
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(number) => number_to_python(py, number)?,
        Value::String(text) => PyString::new(py, text).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(members) => {
            let dict = PyDict::new(py);
            for (name, member) in members {
                dict.set_item(name, to_python(py, member)?)?;
            }
            dict.into_any()
        }
    })
}

fn number_to_python<'py>(py: Python<'py>, number: &Number) -> PyResult<Bound<'py, PyAny>> {
    if let Some(int) = number.as_i64() {
        return Ok(int.into_pyobject(py)?.into_any());
    }
    if let Some(int) = number.as_u64() {
        return Ok(int.into_pyobject(py)?.into_any());
    }
    let float = number.as_f64().unwrap_or(f64::NAN);
    Ok(PyFloat::new(py, float).into_any())
}

/// A Python object as a JSON value.
///
/// # Errors
/// `TypeError` for an object of another type, or a dict key that is not a
/// `str`, `int`, `float`, `bool` or `None`; `ValueError` for a float that is
/// NaN or infinite, an integer outside −2⁶³..2⁶⁴, or nesting deeper than 512.
pub(crate) fn to_json(object: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_json_at(object, 0)
}

fn to_json_at(object: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "cannot encode as JSON: nesting deeper than {MAX_DEPTH} levels (a circular reference?)"
        )));
    }
    if object.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(text) = object.cast::<PyString>() {
        return Ok(Value::String(text.to_cow()?.into_owned()));
    }
    // `bool` before `int`: it is a subclass of `int`.
    if let Ok(flag) = object.cast::<PyBool>() {
        return Ok(Value::Bool(flag.is_true()));
    }
    if let Ok(int) = object.cast::<PyInt>() {
        return int_to_json(int);
    }
    if let Ok(float) = object.cast::<PyFloat>() {
        return float_to_json(float.value());
    }
    if let Ok(dict) = object.cast::<PyDict>() {
        let mut members = Map::with_capacity(dict.len());
        for (name, member) in dict.iter() {
            members.insert(key_to_json(&name)?, to_json_at(&member, depth + 1)?);
        }
        return Ok(Value::Object(members));
    }
    if let Ok(list) = object.cast::<PyList>() {
        let mut items = Vec::with_capacity(list.len());
        for item in list.iter() {
            items.push(to_json_at(&item, depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    if let Ok(tuple) = object.cast::<PyTuple>() {
        let mut items = Vec::with_capacity(tuple.len());
        for item in tuple.iter() {
            items.push(to_json_at(&item, depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    Err(PyTypeError::new_err(format!(
        "Object of type {} is not JSON serializable",
        type_name(object)
    )))
}

fn int_to_json(int: &Bound<'_, PyInt>) -> PyResult<Value> {
    if let Ok(value) = int.extract::<i64>() {
        return Ok(Value::from(value));
    }
    if let Ok(value) = int.extract::<u64>() {
        return Ok(Value::from(value));
    }
    Err(PyValueError::new_err(format!(
        "cannot encode the integer {} as JSON: it is outside -2**63..2**64",
        int.str()?
    )))
}

fn float_to_json(value: f64) -> PyResult<Value> {
    Number::from_f64(value).map(Value::Number).ok_or_else(|| {
        PyValueError::new_err(format!(
            "Out of range float values are not JSON compliant: {value}"
        ))
    })
}

/// A dict key as `json.dumps` writes it: `str` as is; `int`, `float`,
/// `bool` and `None` as their JSON text.
fn key_to_json(key: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(text) = key.cast::<PyString>() {
        return Ok(text.to_cow()?.into_owned());
    }
    if key.is_none() {
        return Ok("null".to_owned());
    }
    if let Ok(flag) = key.cast::<PyBool>() {
        return Ok(if flag.is_true() { "true" } else { "false" }.to_owned());
    }
    if let Ok(int) = key.cast::<PyInt>() {
        return Ok(int_to_json(int)?.to_string());
    }
    if let Ok(float) = key.cast::<PyFloat>() {
        return Ok(float_to_json(float.value())?.to_string());
    }
    Err(PyTypeError::new_err(format!(
        "keys must be str, int, float, bool or None, not {}",
        type_name(key)
    )))
}

fn type_name(object: &Bound<'_, PyAny>) -> String {
    object
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "object".to_owned())
}
