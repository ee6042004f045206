package farm

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/queue"
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

func validReport() *Report {
	return &Report{Version: RecordVersion, Set: "abcdefgh12345678", Tenant: tenant, DrvPath: fakePath("a.drv"),
		Attempt: 1, Builder: "b1", Outcome: BuildFailed, ExitCode: 1, Log: []string{"error"}, Time: time.Unix(1, 0).UTC()}
}

// TestDecodeReportSubject: a report decodes on its own builder's
// subject only: not on another builder's (a runner speaking for
// another), another tenant's, nor the unscoped subject reports had
// before they were bound to their builders.
func TestDecodeReportSubject(t *testing.T) {
	rep := validReport()
	b, _ := json.Marshal(rep)
	own, err := rep.Subject()
	if err != nil || own != "farm.report."+tenant+"."+queue.StagingScope("b1") {
		t.Fatalf("subject %q, %v", own, err)
	}
	if got, err := DecodeReport(own, b); err != nil || !reflect.DeepEqual(got, rep) {
		t.Errorf("on its own subject: %+v, %v", got, err)
	}
	other, _ := queue.FarmReportSubject(tenant, "b2")
	otherTenant, _ := queue.FarmReportSubject("t2", "b1")
	for _, subj := range []string{other, otherTenant, "farm.report." + tenant, "farm.report." + tenant + ".b1", ""} {
		if _, err := DecodeReport(subj, b); !errors.Is(err, ErrInvalid) {
			t.Errorf("on %q: %v, want ErrInvalid", subj, err)
		}
	}
}

func FuzzDecodeReport(f *testing.F) {
	rep := validReport()
	b, _ := json.Marshal(rep)
	subj, _ := rep.Subject()
	f.Add(subj, b)
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		rep, err := DecodeReport(subject, data)
		if err != nil {
			return
		}
		if rep.Builder == "" || (rep.Outcome != Built && rep.Outcome != BuildFailed) || validID(rep.Set) != nil {
			t.Fatalf("decoded an invalid report: %+v", rep)
		}
		// What decodes arrived on its own builder's subject.
		if want, err := rep.Subject(); err != nil || want != subject {
			t.Fatalf("decoded a report of %q on %q", rep.Builder, subject)
		}
	})
}

// TestReportReplicaAttemptRange: a report names replica 0 or later and
// attempt 1 or later. A negative replica, with a claim record to match
// (which any runner may write), indexed the state's attempts and crashed
// every scheduler on each redelivery.
func TestReportReplicaAttemptRange(t *testing.T) {
	for _, tc := range []struct{ replica, attempt int }{{-1, 1}, {0, 0}, {0, -3}, {-5, 2}} {
		rep := validReport()
		rep.Replica, rep.Attempt = tc.replica, tc.attempt
		b, _ := json.Marshal(rep)
		subj, _ := rep.Subject()
		if _, err := DecodeReport(subj, b); !errors.Is(err, ErrInvalid) {
			t.Errorf("replica %d attempt %d: %v, want ErrInvalid", tc.replica, tc.attempt, err)
		}
	}
}
