package action

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	githubactions "github.com/sethvargo/go-githubactions"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
)

// env is a step's environment: INPUT_<NAME> for each input given by name.
func env(inputs map[string]string, extra ...string) func(string) string {
	m := map[string]string{}
	for k, v := range inputs {
		m["INPUT_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return func(k string) string { return m[k] }
}

func parse(t *testing.T, getenv func(string) string) (*inputs, string, error) {
	t.Helper()
	var out bytes.Buffer
	gha := githubactions.New(githubactions.WithGetenv(getenv), githubactions.WithWriter(&out))
	in, err := readInputs(gha, getenv)
	return in, out.String(), err
}

func TestReadInputs(t *testing.T) {
	in, out, err := parse(t, env(map[string]string{
		"installables": " ./a.nix\n.#b  /nix/store/x-c.drv ",
		"attr":         "hello",
		"args":         "busybox=/bin/busybox\n\nn 3\n",
		"argstrs":      "message hello world",
		"nix-options":  "sandbox = false\nsubstituters=\n",
		"cache-url":    "https://cache.example/",
		"rekor-url":    "https://rekor.example/",
		"verify":       "true",
		"key":          "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END PRIVATE KEY-----",
		"nats-token":   "nats-secret-token",
	}, "PROVENIX_NATS_URL", " nats://from-env:4222 "))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in.installables, []string{"./a.nix", ".#b", "/nix/store/x-c.drv"}) || in.attr != "hello" {
		t.Errorf("installables %q attr %q", in.installables, in.attr)
	}
	if !reflect.DeepEqual(in.args, map[string]string{"busybox": "/bin/busybox", "n": "3"}) ||
		!reflect.DeepEqual(in.argstrs, map[string]string{"message": "hello world"}) ||
		!reflect.DeepEqual(in.nixOptions, map[string]string{"sandbox": " false", "substituters": ""}) {
		t.Errorf("args %q argstrs %q nix options %q", in.args, in.argstrs, in.nixOptions)
	}
	// Defaults: the tenant, key signing outside a runner job, the NATS URL
	// from the environment; URLs lose their trailing slash.
	if in.tenant != "default" || in.signing != SigningKey || in.natsURL != "nats://from-env:4222" ||
		in.cacheURL != "https://cache.example" || in.rekorURL != "https://rekor.example" || !in.verify {
		t.Errorf("parsed %+v", in)
	}
	// Secrets are masked, line by line for a PEM key, armour excepted.
	for _, m := range []string{"::add-mask::nats-secret-token", "::add-mask::c2VjcmV0LWtleS1ib2R5"} {
		if !strings.Contains(out, m+"\n") {
			t.Errorf("no %q in\n%s", m, out)
		}
	}
	if strings.Contains(out, "::add-mask::-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("the PEM armour line is masked on its own:\n%s", out)
	}

	// Inside a Provenix runner job, the runner signs by default; the
	// Actions spelling INPUT_NATS-URL is read as well.
	in, _, err = parse(t, env(map[string]string{"installables": ".#a"}, "PROVENIX_RUNNER_SOCKET", "/run/x.sock", "INPUT_NATS-URL", "nats://dash:4222"))
	if err != nil || in.signing != SigningRunner || in.natsURL != "nats://dash:4222" {
		t.Errorf("in a runner job: %+v %v", in, err)
	}
}

func TestReadInputsErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inputs map[string]string
		want   string
	}{
		{"no installables", map[string]string{"installables": " \n "}, "input installables is empty"},
		{"arg without value", map[string]string{"installables": "a.nix", "args": "busybox"}, "input args:"},
		{"argstr without name", map[string]string{"installables": "a.nix", "argstrs": "=x"}, "input argstrs:"},
		{"nix option without =", map[string]string{"installables": "a.nix", "nix-options": "sandbox false"}, `input nix-options: line "sandbox false": want NAME=VALUE`},
		{"verify not a bool", map[string]string{"installables": "a.nix", "verify": "yes please"}, `input verify "yes please": want true or false`},
		{"verify without a cache", map[string]string{"installables": "a.nix", "verify": "true"}, "input verify: true needs cache-url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, _, err := parse(t, env(tc.inputs))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("readInputs = %+v, %v; want an error with %q", in, err, tc.want)
			}
		})
	}
}

// TestRunSigningErrors: a signing mode without what it needs fails before
// anything is built or published, as an ::error:: annotation, with no
// outputs set.
func TestRunSigningErrors(t *testing.T) {
	base := map[string]string{"installables": "/nix/store/00000000000000000000000000000000-never.drv", "builder-id": "ci", "nats-url": "nats://127.0.0.1:1"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		inputs map[string]string
		extra  []string
		want   string
		is     error
	}{
		{"unknown mode", with("signing", "gpg"), nil, `input signing "gpg": want runner, key or keyless`, nil},
		{"key without key", with("signing", "key"), nil, "signing: key needs the key input", nil},
		{"key without builder-id", with("signing", "key", "key", "k", "builder-id", ""), nil, "signing: key needs builder-id", nil},
		{"key without nats-url", with("signing", "key", "key", "k", "nats-url", ""), nil, "signing: key needs nats-url", nil},
		{"key not a key", with("signing", "key", "key", "not a key"), nil, "input key is not a usable builder key", nil},
		{"runner outside a job", with("signing", "runner"), nil, "signing: runner needs a Provenix runner job", nil},
		{"keyless without sigstore", with("signing", "keyless", "fulcio-url", "https://f", "rekor-url", "https://r"), nil, "signing: keyless needs fulcio-url, rekor-url and tsa-url", nil},
		{"keyless without builder-id", with("signing", "keyless", "fulcio-url", "https://f", "rekor-url", "https://r", "tsa-url", "https://t", "builder-id", ""), nil, "signing: keyless needs builder-id", nil},
		{"keyless without OIDC", with("signing", "keyless", "fulcio-url", "https://f", "rekor-url", "https://r", "tsa-url", "https://t"), nil, "", ErrNoOIDC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			outFile := filepath.Join(tmp, "output")
			extra := append([]string{"RUNNER_TEMP", tmp, "GITHUB_OUTPUT", outFile}, tc.extra...)
			var stdout bytes.Buffer
			err := Run(context.Background(), Config{Getenv: env(tc.inputs, extra...), Stdout: &stdout})
			if err == nil || (tc.want != "" && !strings.Contains(err.Error(), tc.want)) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("Run: %v; want %q %v", err, tc.want, tc.is)
			}
			if !strings.Contains(stdout.String(), "::error::provenix: ") {
				t.Errorf("no ::error:: annotation:\n%s", stdout.String())
			}
			if b, err := os.ReadFile(outFile); err == nil && len(b) > 0 {
				t.Errorf("outputs set: %s", b)
			}
			// The key file written for signing: key is removed again.
			if left, _ := filepath.Glob(filepath.Join(tmp, "provenix-key-*")); len(left) != 0 {
				t.Errorf("left in RUNNER_TEMP: %v", left)
			}
		})
	}
}

// TestTargets: the installables with the rules of 'provenix build', each
// described by the job the step's environment names.
func TestTargets(t *testing.T) {
	getenv := env(map[string]string{"installables": ".#hello /nix/store/00000000000000000000000000000000-x.drv", "attr": "a"},
		"GITHUB_SERVER_URL", "https://forge.example/", "GITHUB_REPOSITORY", "distro/pkgs", "GITHUB_SHA", "abc123",
		"GITHUB_REF", "refs/heads/main", "GITHUB_RUN_ID", "42", "GITHUB_WORKFLOW", "build.yml", "GITHUB_JOB", "build",
		"GITHUB_EVENT_NAME", "push", "GITHUB_ACTOR", "alice")
	gha := githubactions.New(githubactions.WithGetenv(getenv), githubactions.WithWriter(&bytes.Buffer{}))
	in, err := readInputs(gha, getenv)
	if err != nil {
		t.Fatal(err)
	}
	s := &step{cfg: Config{Getenv: getenv}, gha: gha, in: in}
	tgts, err := s.targets(context.Background())
	if err != nil || len(tgts) != 2 {
		t.Fatalf("targets: %+v %v", tgts, err)
	}
	wantWF := &attest.Workflow{Server: "https://forge.example", Repository: "distro/pkgs", Ref: "refs/heads/main", Sha: "abc123",
		Workflow: "build.yml", Job: "build", Event: "push", Actor: "alice", RunID: "42", Capture: CaptureJobStepKey}
	wantSrc := &attest.Source{Repository: "https://forge.example/distro/pkgs", Revision: "abc123", Ref: "refs/heads/main"}
	for _, tg := range tgts {
		if !reflect.DeepEqual(tg.Workflow, wantWF) || !reflect.DeepEqual(tg.Source, wantSrc) ||
			tg.InvocationID != "https://forge.example/distro/pkgs/actions/runs/42" {
			t.Errorf("target %+v: workflow %+v source %+v", tg.Installable, tg.Workflow, tg.Source)
		}
	}
	if tgts[0].Installable.Kind != builder.KindFlake || tgts[1].Installable.Kind != builder.KindDrv {
		t.Errorf("kinds %q %q", tgts[0].Installable.Kind, tgts[1].Installable.Kind)
	}
	// Keyless marks its capture; outside Actions there is no source.
	s.capture = CaptureJobStepKeyless
	s.cfg.Getenv = env(nil)
	s.gha = githubactions.New(githubactions.WithGetenv(s.cfg.Getenv), githubactions.WithWriter(&bytes.Buffer{}))
	src, wf, inv := s.workflow()
	if src != nil || inv != "" || !reflect.DeepEqual(wf, &attest.Workflow{Capture: CaptureJobStepKeyless}) {
		t.Errorf("outside Actions: %+v %+v %q", src, wf, inv)
	}
	// A bad installable is the builder's usage error.
	s.in.installables = []string{"nix/store/relative.drv"}
	if _, err := s.targets(context.Background()); !errors.Is(err, builder.ErrTarget) {
		t.Errorf("relative .drv: %v", err)
	}
}
