package farm

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

func validRequest() *Request {
	return &Request{Version: RecordVersion, Set: "abcdefgh12345678", Tenant: tenant, DrvPath: fakePath("a.drv"), System: "x86_64-linux",
		Features: []string{"kvm"}, Outputs: map[string]string{"out": fakePath("a")}, Replica: 1, Attempt: 2,
		Exclude: []string{"b1"}, Closure: "closure/abcdefgh12345678@00", Requested: time.Unix(1, 0).UTC()}
}

func TestRequestValidate(t *testing.T) {
	if err := validRequest().Validate(); err != nil {
		t.Fatal(err)
	}
	for what, change := range map[string]func(*Request){
		"version":     func(r *Request) { r.Version = 2 },
		"set id":      func(r *Request) { r.Set = "UPPER" },
		"system":      func(r *Request) { r.System = "x86_64.linux" },
		"drv path":    func(r *Request) { r.DrvPath = fakePath("a") },
		"no outputs":  func(r *Request) { r.Outputs = nil },
		"output path": func(r *Request) { r.Outputs["out"] = "/tmp/x" },
		"attempt 0":   func(r *Request) { r.Attempt = 0 },
		"closure key": func(r *Request) { r.Closure = "nar/x" },
	} {
		r := validRequest()
		change(r)
		if err := r.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", what, err)
		}
	}
	if a, b := validRequest().MsgID(), (&Request{Set: "abcdefgh12345678", DrvPath: fakePath("a.drv"), Replica: 1, Attempt: 2}).MsgID(); a != b {
		t.Errorf("MsgID depends on more than set, derivation, replica and attempt: %s %s", a, b)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	b, _ := json.Marshal(validRequest())
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			return
		}
		// What decodes is valid, and reads back the same.
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded an invalid request: %v", err)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := DecodeRequest(again)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, r, r2)
		}
	})
}

func FuzzDecodeReport(f *testing.F) {
	b, _ := json.Marshal(&Report{Version: RecordVersion, Set: "abcdefgh12345678", Tenant: tenant, DrvPath: fakePath("a.drv"),
		Builder: "b1", Outcome: BuildFailed, ExitCode: 1, Log: []string{"error"}, Time: time.Unix(1, 0).UTC()})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := DecodeReport(data)
		if err != nil {
			return
		}
		if rep.Builder == "" || (rep.Outcome != Built && rep.Outcome != BuildFailed) || validID(rep.Set) != nil {
			t.Fatalf("decoded an invalid report: %+v", rep)
		}
	})
}
