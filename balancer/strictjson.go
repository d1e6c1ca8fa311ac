package balancer

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The configuration's JSON codec. Every JSON path into a Config (ParseConfig,
// Config.UnmarshalJSON, NewAlgorithm and so the gRPC policy) decodes with
// decodeStrict, and Config.MarshalJSON encodes with encodeJSON, so that
// built-in and registered algorithms' options follow the same rules:
//
//   - Object keys match JSON field names exactly, case included (encoding/json
//     matches them case-insensitively); an unknown or duplicate key is an error
//     that names it and, for a near miss, the field meant.
//   - A time.Duration is a duration string such as "30s".
//   - A field with a `range` tag that is written in the JSON is checked
//     against that range even when it is written as the field's zero value;
//     an omitted field (or null) keeps its default. CheckRanges applies the
//     same tags to Go-built values, from Validate.
//   - A field of type Algorithm is an algorithm name, or an object with one
//     key, the name, holding its options.
//   - A type with its own UnmarshalJSON (MarshalJSON) decodes (encodes)
//     itself, so it is as exact as that method (SlowStart's and PeakEWMA's
//     call back into this codec); a TextUnmarshaler is a string.
//   - null means "not written"; anything after the JSON value is an error.
//
// Type descriptions (fields by JSON name, parsed range tags) are computed once
// per type and cached.

var (
	algorithmType       = reflect.TypeFor[Algorithm]()
	durationType        = reflect.TypeFor[time.Duration]()
	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	marshalerType       = reflect.TypeFor[json.Marshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	textMarshalerType   = reflect.TypeFor[encoding.TextMarshaler]()
)

// decodeStrict decodes js into v, a non-nil pointer, by the rules above.
// Errors are *fieldError when they are about a field.
func decodeStrict(js []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("cannot decode into %T: want a non-nil pointer", v)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		if err == io.EOF {
			return errors.New("empty JSON")
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return decodeValue(raw, rv.Elem())
}

// encodeJSON encodes v by the same rules: the form decodeStrict reads.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() {
		rv = rv.Elem() // addressable, so pointer-receiver methods count
	}
	if err := encodeValue(&buf, rv); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CheckRanges reports the first field of the struct v (or that v points to)
// whose value lies outside the range its `range` struct tag gives, naming the
// field by its JSON name and giving the range, as in
// "choiceCount: 1 is out of range [2, 100]". A field at its zero value (a nil
// pointer, for pointer fields) is not checked: in Go, as when it is omitted
// from JSON, it means the default. Nested structs (and pointers to them: the
// configuration's sections, such as "outlierDetection" with its
// "successRate") are walked, and their fields named by their path
// ("successRate.stdevFactor"); interfaces (an Algorithm), maps and slices are
// not.
//
// The tag is an interval: `range:"[2, 100]"`, with "(" or ")" for an open end
// and ∞ for no bound, as in `range:"(0, ∞)"`. Bounds are written as the
// field's type is (integer, float, or for a time.Duration a duration string
// such as "1ms" or "1h"). The configuration's JSON decoder checks the same tag
// for every field written in the JSON, zero values included, so that an
// explicit out-of-range value is an error rather than the default; an
// algorithm's Validate calls CheckRanges so that Go-built options are held to
// the same ranges, from the same place.
func CheckRanges(v any) error {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return nil
	}
	ti := typeInfoOf(rv.Type())
	if ti.err != nil {
		return ti.err
	}
	for i := range ti.fields {
		f := &ti.fields[i]
		if f.rng == nil {
			fv, ok := fieldByIndex(rv, f.index)
			if !ok {
				continue
			}
			sv := fv
			if sv.Kind() == reflect.Pointer && !sv.IsNil() {
				sv = sv.Elem()
			}
			if sv.Kind() == reflect.Struct {
				if !sv.CanAddr() {
					p := reflect.New(sv.Type())
					p.Elem().Set(sv)
					sv = p.Elem()
				}
				if err := CheckRanges(sv.Addr().Interface()); err != nil {
					return inField(f.name, err)
				}
			}
			continue
		}
		fv, ok := fieldByIndex(rv, f.index)
		if !ok {
			continue
		}
		if fv.Kind() == reflect.Pointer {
			if fv.IsNil() {
				continue
			}
			fv = fv.Elem()
		} else if isNumericZero(fv) {
			continue
		}
		if err := f.rng.check(fv); err != nil {
			return &fieldError{path: f.name, err: err}
		}
	}
	return nil
}

// fieldError is an error about a field, named by its JSON path within the
// value being decoded or validated ("slowStart.window", "endpoints[2].port").
type fieldError struct {
	path string // "" when err names its field itself
	err  error
}

func (e *fieldError) Error() string {
	if e.path == "" {
		return e.err.Error()
	}
	return e.path + ": " + e.err.Error()
}

func (e *fieldError) Unwrap() error { return e.err }

// namedError is an error that already names its field (a field of type
// Algorithm says "algorithm NAME: ..."), so the field's name is not added.
type namedError struct{ error }

func (e namedError) Unwrap() error { return e.error }

// inField places err, if any, inside the field or element name.
func inField(name string, err error) error {
	if err == nil {
		return nil
	}
	if ne, ok := err.(namedError); ok {
		return &fieldError{err: ne.error}
	}
	if fe, ok := err.(*fieldError); ok {
		switch {
		case fe.path == "":
			return &fieldError{path: name, err: fe.err}
		case strings.HasPrefix(fe.path, "["):
			return &fieldError{path: name + fe.path, err: fe.err}
		default:
			return &fieldError{path: name + "." + fe.path, err: fe.err}
		}
	}
	return &fieldError{path: name, err: err}
}

// rangeError is a value outside a field's range.
type rangeError struct {
	value, rng string
	written    bool // written as the zero value, which omitted would be the default
}

func (e *rangeError) Error() string {
	if e.written {
		return e.value + " is out of range " + e.rng + " (omit it for the default)"
	}
	return e.value + " is out of range " + e.rng
}

// overflowError is a number too large for its field's type.
type overflowError struct {
	lit string
	typ reflect.Type
}

func (e *overflowError) Error() string { return e.lit + " does not fit in " + e.typ.String() }

// field is a struct field as JSON sees it.
type field struct {
	name      string // JSON name
	index     []int
	typ       reflect.Type
	tagged    bool // the name comes from a json tag
	omitEmpty bool
	omitZero  bool
	rng       *rangeSpec
}

type typeInfo struct {
	fields []field
	byName map[string]int
	err    error // the type cannot be decoded (a bad tag): reported on use
}

var typeCache sync.Map // reflect.Type -> *typeInfo

func typeInfoOf(t reflect.Type) *typeInfo {
	if ti, ok := typeCache.Load(t); ok {
		return ti.(*typeInfo)
	}
	ti := &typeInfo{byName: map[string]int{}}
	ti.fields, ti.err = typeFields(t)
	for i, f := range ti.fields {
		ti.byName[f.name] = i
	}
	v, _ := typeCache.LoadOrStore(t, ti)
	return v.(*typeInfo)
}

// typeFields lists t's JSON fields as encoding/json does: exported fields by
// their json tag name (else their Go name), "-" skipped, the fields of
// untagged embedded structs promoted, and of several fields with one name the
// shallowest kept (the tagged one among equals; none if still ambiguous).
func typeFields(t reflect.Type) ([]field, error) {
	var all []field
	var collect func(t reflect.Type, index []int, visited []reflect.Type) error
	collect = func(t reflect.Type, index []int, visited []reflect.Type) error {
		if slices.Contains(visited, t) {
			return nil
		}
		visited = append(visited, t)
		for i := range t.NumField() {
			sf := t.Field(i)
			ft := sf.Type
			if !sf.IsExported() {
				continue // unexported embedded structs too: reflect cannot set through them
			}
			if sf.Anonymous && ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(slices.Clip(index), i)
			if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
				if _, ok := sf.Tag.Lookup("range"); ok {
					return fmt.Errorf("%v.%s: a range tag on an embedded struct", t, sf.Name)
				}
				if err := collect(ft, idx, visited); err != nil {
					return err
				}
				continue
			}
			f := field{name: name, index: idx, typ: sf.Type, tagged: name != ""}
			if f.name == "" {
				f.name = sf.Name
			}
			for o := range strings.SplitSeq(opts, ",") {
				switch o {
				case "omitempty":
					f.omitEmpty = true
				case "omitzero":
					f.omitZero = true
				case "string":
					return fmt.Errorf("%v.%s: the json tag option \",string\" is not supported", t, sf.Name)
				}
			}
			if r, ok := sf.Tag.Lookup("range"); ok {
				rs, err := parseRange(r, sf.Type)
				if err != nil {
					return fmt.Errorf("%v.%s: range tag %q: %w", t, sf.Name, r, err)
				}
				f.rng = rs
			}
			all = append(all, f)
		}
		return nil
	}
	if err := collect(t, nil, nil); err != nil {
		return nil, err
	}
	// Resolve names used more than once: the shallowest field wins, or the one
	// tagged field among the shallowest; otherwise none.
	var out []field
	for _, f := range all {
		depth := len(f.index)
		n, tagged := 0, 0
		for _, g := range all {
			if g.name != f.name {
				continue
			}
			if len(g.index) < depth {
				n = -1 // a shallower field hides f
				break
			}
			if len(g.index) == depth {
				n++
				if g.tagged {
					tagged++
				}
			}
		}
		if n == 1 || n > 1 && tagged == 1 && f.tagged {
			out = append(out, f)
		}
	}
	return out, nil
}

// rangeSpec is a parsed range tag.
type rangeSpec struct {
	text           string // as written, for messages
	loOpen, hiOpen bool
	loInf, hiInf   bool
	lo, hi         float64 // for float fields
	ilo, ihi       int64   // for signed integer and duration fields
	ulo, uhi       uint64  // for unsigned integer fields
}

func parseRange(s string, t reflect.Type) (*rangeSpec, error) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	r := &rangeSpec{text: s}
	s = strings.TrimSpace(s)
	if len(s) < 2 || (s[0] != '[' && s[0] != '(') || (s[len(s)-1] != ']' && s[len(s)-1] != ')') {
		return nil, errors.New(`want an interval such as "[2, 100]" or "(0, 1h]"`)
	}
	r.loOpen, r.hiOpen = s[0] == '(', s[len(s)-1] == ')'
	loS, hiS, ok := strings.Cut(s[1:len(s)-1], ",")
	if !ok {
		return nil, errors.New("want two bounds separated by a comma")
	}
	loS, hiS = strings.TrimSpace(loS), strings.TrimSpace(hiS)
	r.loInf, r.hiInf = loS == "-∞" || loS == "∞", hiS == "∞" || hiS == "+∞"
	if r.loInf && !r.loOpen || r.hiInf && !r.hiOpen {
		return nil, errors.New("an infinite bound must be open")
	}
	var err error
	bound := func(s string, inf bool, f *float64, i *int64, u *uint64) {
		if inf || err != nil {
			return
		}
		switch {
		case t == durationType:
			var d time.Duration
			d, err = time.ParseDuration(s)
			*i = int64(d)
		case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
			*i, err = strconv.ParseInt(s, 10, 64)
		case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr:
			*u, err = strconv.ParseUint(s, 10, 64)
		case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
			*f, err = strconv.ParseFloat(s, 64)
		default:
			err = fmt.Errorf("a range on a field of type %v: want a number or a time.Duration", t)
		}
	}
	bound(loS, r.loInf, &r.lo, &r.ilo, &r.ulo)
	bound(hiS, r.hiInf, &r.hi, &r.ihi, &r.uhi)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// check reports whether v (a number, not a pointer) is in range.
func (r *rangeSpec) check(v reflect.Value) error {
	in := true
	var text string
	switch {
	case v.Type() == durationType:
		x := v.Int()
		in = (r.loInf || x > r.ilo || !r.loOpen && x == r.ilo) && (r.hiInf || x < r.ihi || !r.hiOpen && x == r.ihi)
		text = time.Duration(x).String()
	case v.CanInt():
		x := v.Int()
		in = (r.loInf || x > r.ilo || !r.loOpen && x == r.ilo) && (r.hiInf || x < r.ihi || !r.hiOpen && x == r.ihi)
		text = strconv.FormatInt(x, 10)
	case v.CanUint():
		x := v.Uint()
		in = (r.loInf || x > r.ulo || !r.loOpen && x == r.ulo) && (r.hiInf || x < r.uhi || !r.hiOpen && x == r.uhi)
		text = strconv.FormatUint(x, 10)
	case v.CanFloat():
		x := v.Float() // NaN fails every comparison, so it is out of range
		in = (r.loInf && !math.IsNaN(x) || x > r.lo || !r.loOpen && x == r.lo) &&
			(r.hiInf && !math.IsNaN(x) || x < r.hi || !r.hiOpen && x == r.hi)
		text = strconv.FormatFloat(x, 'g', -1, v.Type().Bits())
	}
	if in {
		return nil
	}
	return &rangeError{value: text, rng: r.text}
}

func isNumericZero(v reflect.Value) bool {
	switch {
	case v.CanInt():
		return v.Int() == 0
	case v.CanUint():
		return v.Uint() == 0
	case v.CanFloat():
		return v.Float() == 0
	}
	return v.IsZero()
}

// fieldByIndex is v.FieldByIndex that reports false at a nil embedded pointer.
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v, true
}

// fieldByIndexAlloc is v.FieldByIndex that allocates nil embedded pointers.
func fieldByIndexAlloc(v reflect.Value, index []int) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

// describe names a JSON value's kind for a message, showing short scalars.
func describe(raw []byte) string {
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	if len(raw) > 40 {
		return string(raw[:37]) + "..."
	}
	return string(raw)
}

func isNull(raw []byte) bool { return len(raw) == 4 && string(raw) == "null" }

// decodeValue decodes the valid JSON value raw into v, which is settable.
func decodeValue(raw []byte, v reflect.Value) error {
	t := v.Type()
	if t == algorithmType {
		if isNull(raw) {
			v.SetZero()
			return nil
		}
		a, err := decodeAlgorithm(raw)
		if err != nil {
			return namedError{err}
		}
		v.Set(reflect.ValueOf(a))
		return nil
	}
	if t.Kind() == reflect.Pointer {
		if isNull(raw) {
			v.SetZero()
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		return decodeValue(raw, v.Elem())
	}
	if isNull(raw) { // null is "not written": nil for what can be nil, else no change
		switch t.Kind() {
		case reflect.Interface, reflect.Map, reflect.Slice:
			v.SetZero()
		}
		return nil
	}
	if v.CanAddr() {
		if p := v.Addr(); p.Type().Implements(unmarshalerType) {
			return p.Interface().(json.Unmarshaler).UnmarshalJSON(raw)
		}
		if p := v.Addr(); p.Type().Implements(textUnmarshalerType) {
			if raw[0] != '"' {
				return fmt.Errorf("want a string, got %s", describe(raw))
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return err
			}
			return p.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s))
		}
	}
	if t == durationType {
		if raw[0] != '"' {
			return fmt.Errorf(`want a duration string such as "30s", got %s`, describe(raw))
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(d))
		return nil
	}
	switch t.Kind() {
	case reflect.Bool:
		if raw[0] != 't' && raw[0] != 'f' {
			return fmt.Errorf("want true or false, got %s", describe(raw))
		}
		v.SetBool(raw[0] == 't')
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return fmt.Errorf("want an integer, got %s", describe(raw))
		}
		x, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return fmt.Errorf("want an integer, got %s", describe(raw))
		}
		if err != nil || v.OverflowInt(x) {
			return &overflowError{describe(raw), t}
		}
		v.SetInt(x)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if raw[0] < '0' || raw[0] > '9' {
			return fmt.Errorf("want a non-negative integer, got %s", describe(raw))
		}
		x, err := strconv.ParseUint(string(raw), 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return fmt.Errorf("want a non-negative integer, got %s", describe(raw))
		}
		if err != nil || v.OverflowUint(x) {
			return &overflowError{describe(raw), t}
		}
		v.SetUint(x)
	case reflect.Float32, reflect.Float64:
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return fmt.Errorf("want a number, got %s", describe(raw))
		}
		x, err := strconv.ParseFloat(string(raw), t.Bits())
		if err != nil || v.OverflowFloat(x) {
			return &overflowError{describe(raw), t}
		}
		v.SetFloat(x)
	case reflect.String:
		if raw[0] != '"' {
			return fmt.Errorf("want a string, got %s", describe(raw))
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		v.SetString(s)
	case reflect.Interface:
		if t.NumMethod() != 0 {
			return fmt.Errorf("cannot decode into interface type %v", t)
		}
		var x any
		if err := json.Unmarshal(raw, &x); err != nil {
			return err
		}
		if x == nil {
			v.SetZero()
		} else {
			v.Set(reflect.ValueOf(x))
		}
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return json.Unmarshal(raw, v.Addr().Interface()) // base64, as encoding/json
		}
		if raw[0] != '[' {
			return fmt.Errorf("want an array, got %s", describe(raw))
		}
		return decodeArray(raw, v)
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("cannot decode into %v: map keys must be strings", t)
		}
		if raw[0] != '{' {
			return fmt.Errorf("want an object, got %s", describe(raw))
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(t))
		}
		return eachMember(raw, func(key string, val []byte) error {
			e := reflect.New(t.Elem()).Elem()
			if err := decodeValue(val, e); err != nil {
				return inField(strconv.Quote(key), err)
			}
			v.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), e)
			return nil
		})
	case reflect.Struct:
		if raw[0] != '{' {
			return fmt.Errorf("want an object, got %s", describe(raw))
		}
		return decodeStruct(raw, v)
	default:
		return fmt.Errorf("cannot decode into %v", t)
	}
	return nil
}

func decodeArray(raw []byte, v reflect.Value) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return err
	}
	if v.Kind() == reflect.Slice {
		v.SetLen(0)
	}
	i := 0
	for ; dec.More(); i++ {
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		if v.Kind() == reflect.Array {
			if i >= v.Len() {
				return fmt.Errorf("want at most %d elements", v.Len())
			}
			if err := decodeValue(val, v.Index(i)); err != nil {
				return inField("["+strconv.Itoa(i)+"]", err)
			}
			continue
		}
		e := reflect.New(v.Type().Elem()).Elem()
		if err := decodeValue(val, e); err != nil {
			return inField("["+strconv.Itoa(i)+"]", err)
		}
		v.Set(reflect.Append(v, e))
	}
	if v.Kind() == reflect.Slice && v.IsNil() {
		v.Set(reflect.MakeSlice(v.Type(), 0, 0)) // [] is empty, not null
	}
	for ; v.Kind() == reflect.Array && i < v.Len(); i++ {
		v.Index(i).SetZero()
	}
	return nil
}

func decodeStruct(raw []byte, v reflect.Value) error {
	ti := typeInfoOf(v.Type())
	if ti.err != nil {
		return ti.err
	}
	var seen []string
	return eachMember(raw, func(key string, val []byte) error {
		i, ok := ti.byName[key]
		if !ok {
			return unknownField(key, ti)
		}
		if slices.Contains(seen, key) {
			return fmt.Errorf("duplicate field %q", key)
		}
		seen = append(seen, key)
		f := &ti.fields[i]
		fv := fieldByIndexAlloc(v, f.index)
		if err := decodeValue(val, fv); err != nil {
			if oe, ok := err.(*overflowError); ok && f.rng != nil {
				err = &rangeError{value: oe.lit, rng: f.rng.text}
			}
			return inField(f.name, err)
		}
		if f.rng == nil || isNull(val) {
			return nil
		}
		// Written, so checked, even as the zero value (which omitted would
		// mean the default).
		if fv.Kind() == reflect.Pointer {
			fv = fv.Elem()
		}
		if err := f.rng.check(fv); err != nil {
			err.(*rangeError).written = isNumericZero(fv)
			return inField(f.name, err)
		}
		return nil
	})
}

// unknownField names key and, if one is close, the field meant.
func unknownField(key string, ti *typeInfo) error {
	best, bestDist := "", math.MaxInt
	for _, f := range ti.fields {
		if strings.EqualFold(f.name, key) {
			best, bestDist = f.name, 0
			break
		}
		if d := editDistance(strings.ToLower(key), strings.ToLower(f.name)); d < bestDist {
			best, bestDist = f.name, d
		}
	}
	if best != "" && (bestDist == 0 || bestDist <= 2 && 3*bestDist <= len(best)) {
		return fmt.Errorf("unknown field %q, did you mean %q?", key, best)
	}
	if len(ti.fields) == 0 {
		return fmt.Errorf("unknown field %q (there are no fields)", key)
	}
	return fmt.Errorf("unknown field %q", key)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// eachMember calls fn with each member of the valid JSON object raw, in order.
func eachMember(raw []byte, fn func(key string, val []byte) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		if err := fn(key, val); err != nil {
			return err
		}
	}
	return nil
}

// encodeValue appends v's JSON to buf.
func encodeValue(buf *bytes.Buffer, v reflect.Value) error {
	if !v.IsValid() {
		buf.WriteString("null")
		return nil
	}
	t := v.Type()
	if t == algorithmType {
		if v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		a := v.Interface().(Algorithm)
		name, err := json.Marshal(a.Name())
		if err != nil {
			return err
		}
		buf.WriteByte('{')
		buf.Write(name)
		buf.WriteByte(':')
		if err := encodeValue(buf, v.Elem()); err != nil {
			return err
		}
		buf.WriteByte('}')
		return nil
	}
	if (t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface) && v.IsNil() {
		buf.WriteString("null")
		return nil
	}
	m := v
	if t.Kind() != reflect.Pointer && v.CanAddr() {
		m = v.Addr()
	}
	if m.Type().Implements(marshalerType) {
		js, err := m.Interface().(json.Marshaler).MarshalJSON()
		if err != nil {
			return err
		}
		return json.Compact(buf, js)
	}
	if m.Type().Implements(textMarshalerType) {
		text, err := m.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return err
		}
		js, err := json.Marshal(string(text))
		buf.Write(js)
		return err
	}
	if t == durationType {
		js, err := json.Marshal(time.Duration(v.Int()).String())
		buf.Write(js)
		return err
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		return encodeValue(buf, v.Elem())
	case reflect.Struct:
		ti := typeInfoOf(t)
		if ti.err != nil {
			return ti.err
		}
		buf.WriteByte('{')
		first := true
		for i := range ti.fields {
			f := &ti.fields[i]
			fv, ok := fieldByIndex(v, f.index)
			if !ok || f.omitEmpty && isEmptyValue(fv) || f.omitZero && isZeroValue(fv) {
				continue
			}
			if !first {
				buf.WriteByte(',')
			}
			first = false
			name, _ := json.Marshal(f.name)
			buf.Write(name)
			buf.WriteByte(':')
			if err := encodeValue(buf, fv); err != nil {
				return inField(f.name, err)
			}
		}
		buf.WriteByte('}')
		return nil
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && (v.IsNil() || t.Elem().Kind() == reflect.Uint8) {
			js, err := json.Marshal(v.Interface())
			buf.Write(js)
			return err
		}
		buf.WriteByte('[')
		for i := range v.Len() {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeValue(buf, v.Index(i)); err != nil {
				return inField("["+strconv.Itoa(i)+"]", err)
			}
		}
		buf.WriteByte(']')
		return nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("cannot encode %v: map keys must be strings", t)
		}
		if v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			name, _ := json.Marshal(k.String())
			buf.Write(name)
			buf.WriteByte(':')
			if err := encodeValue(buf, v.MapIndex(k)); err != nil {
				return inField(strconv.Quote(k.String()), err)
			}
		}
		buf.WriteByte('}')
		return nil
	case reflect.Bool, reflect.String,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		js, err := json.Marshal(v.Interface())
		buf.Write(js)
		return err
	}
	return fmt.Errorf("cannot encode %v", t)
}

// isEmptyValue is encoding/json's omitempty test.
func isEmptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Interface, reflect.Pointer:
		return v.IsZero()
	}
	return false
}

// isZeroValue is encoding/json's omitzero test: an IsZero method, else the
// zero value.
func isZeroValue(v reflect.Value) bool {
	if z, ok := v.Interface().(interface{ IsZero() bool }); ok {
		if (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) && v.IsNil() {
			return true
		}
		return z.IsZero()
	}
	return v.IsZero()
}
