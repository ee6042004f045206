package action

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	githubactions "github.com/sethvargo/go-githubactions"
	"gopkg.in/yaml.v3"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testcache"
)

const (
	pathA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
	pathB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"
)

func TestSummary(t *testing.T) {
	rows := []Row{
		{StorePath: pathA, NarSHA256: "11", BuilderID: "ci", Verdict: VerdictVerified},
		{StorePath: pathB, NarSHA256: "22", BuilderID: "ci", Verdict: VerdictPublished, Duplicate: true},
	}
	got := Summary(rows, "job step (key from a secret)", "https://cache.example")
	want := "### Provenix\n\nSigned by: job step (key from a secret)\n\n" +
		"| output | NAR sha256 | builder | verdict |\n|---|---|---|---|\n" +
		"| `" + pathA + "` | `11` | `ci` | verified ([narinfo](https://cache.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.narinfo), [provenance](https://cache.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.provenance.json)) |\n" +
		"| `" + pathB + "` | `22` | `ci` | published (already published) ([narinfo](https://cache.example/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.narinfo), [provenance](https://cache.example/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.provenance.json)) |\n"
	if got != want {
		t.Errorf("Summary:\n%s\nwant:\n%s", got, want)
	}
	// Without a cache or a signer note, no links and no signer line.
	got = Summary(rows[:1], "", "")
	if strings.Contains(got, "Signed by") || strings.Contains(got, "narinfo](") || !strings.HasSuffix(got, "| `"+pathA+"` | `11` | `ci` | verified |\n") {
		t.Errorf("Summary without cache:\n%s", got)
	}
}

// TestOutputs: in an Actions step the outputs go to GITHUB_OUTPUT (a
// bundle shared by two outputs listed once) and the table to
// GITHUB_STEP_SUMMARY; outside one they are printed.
func TestOutputs(t *testing.T) {
	d := t.TempDir()
	outFile, sumFile := filepath.Join(d, "out"), filepath.Join(d, "summary")
	rows := []Row{
		{StorePath: pathA, NarSHA256: "11", Bundle: "/tmp/x.sigstore.json", Verdict: VerdictPublished},
		{StorePath: pathB, NarSHA256: "22", Bundle: "/tmp/x.sigstore.json", Verdict: VerdictPublished},
	}
	getenv := env(nil, "GITHUB_OUTPUT", outFile, "GITHUB_STEP_SUMMARY", sumFile)
	var stdout bytes.Buffer
	s := &step{cfg: Config{Getenv: getenv, Stdout: &stdout}, in: &inputs{},
		gha: githubactions.New(githubactions.WithGetenv(getenv), githubactions.WithWriter(&stdout)), rows: rows}
	if err := s.outputs(VerdictPublished); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(outFile)
	for _, w := range []string{"store-paths<<", pathA + "\n" + pathB + "\n", "nar-hashes<<", "11\n22\n", "bundle-paths<<", "verdict<<"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("GITHUB_OUTPUT lacks %q:\n%s", w, b)
		}
	}
	if strings.Count(string(b), "/tmp/x.sigstore.json") != 1 {
		t.Errorf("the bundle is listed %d times:\n%s", strings.Count(string(b), "/tmp/x.sigstore.json"), b)
	}
	if sum, _ := os.ReadFile(sumFile); strings.TrimRight(string(sum), "\n") != strings.TrimRight(Summary(rows, "", ""), "\n") {
		t.Errorf("GITHUB_STEP_SUMMARY:\n%s", sum)
	}

	stdout.Reset()
	getenv = env(nil)
	s.cfg.Getenv = getenv
	s.gha = githubactions.New(githubactions.WithGetenv(getenv), githubactions.WithWriter(&stdout))
	if err := s.outputs(VerdictVerified); err != nil {
		t.Fatal(err)
	}
	want := "store-paths: " + pathA + " " + pathB + "\nnar-hashes: 11 22\nbundle-paths: /tmp/x.sigstore.json\nverdict: verified\n"
	if stdout.String() != want {
		t.Errorf("printed outputs:\n%s\nwant:\n%s", stdout.String(), want)
	}
}

// TestVerifyAll: each output waits for its narinfo and is verified
// against a real cache; one the cache never publishes, or one signed by a
// key the step does not trust, is "not verified" and so is the step; a
// runner-signed step verifies with the runner's key, given as text.
func TestVerifyAll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	cache := testcache.Serve(t)
	stepKey, err := attest.GenerateKeyFiles(filepath.Join(dir, "step"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := attest.GenerateKeyFiles(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	good, forged := cache.PublishAttested(t, ctx, "good", "ci", stepKey), cache.PublishAttested(t, ctx, "forged", "ci", other)
	never := "/nix/store/cccccccccccccccccccccccccccccccc-never"

	var stdout bytes.Buffer
	s := &step{
		cfg:     Config{Getenv: env(nil, "RUNNER_TEMP", t.TempDir()), Stdout: &stdout, CacheTimeout: 300 * time.Millisecond},
		in:      &inputs{signing: SigningKey, cacheURL: cache.URL, builderID: "ci", verify: true},
		pubFile: filepath.Join(dir, "step.pub"),
		rows:    []Row{{StorePath: good}, {StorePath: forged}, {StorePath: never}},
	}
	verdict, err := s.verifyAll(ctx)
	if verdict != VerdictNotVerified || err == nil {
		t.Fatalf("verdict %q, %v; want not verified", verdict, err)
	}
	for _, w := range []string{forged + " is not verified in " + cache.URL, "the cache " + cache.URL + " did not publish " + never + " within 300ms"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if s.rows[0].Verdict != VerdictVerified || s.rows[1].Verdict != VerdictNotVerified || s.rows[2].Verdict != VerdictNotVerified {
		t.Errorf("row verdicts %q %q %q", s.rows[0].Verdict, s.rows[1].Verdict, s.rows[2].Verdict)
	}
	if out := stdout.String(); !strings.Contains(out, "✓ "+good) || !strings.Contains(out, "✗ "+forged) || strings.Contains(out, never) {
		t.Errorf("reports printed:\n%s", out)
	}

	// All published and verified.
	s.rows = []Row{{StorePath: good}}
	if verdict, err := s.verifyAll(ctx); verdict != VerdictVerified || err != nil {
		t.Errorf("one good row: %q %v", verdict, err)
	}

	// The runner's key, written to a temporary file for the verifier and
	// removed afterwards.
	s.in.signing = SigningRunner
	s.pubFile = ""
	if _, err := s.verifyAll(ctx); err == nil || !strings.Contains(err.Error(), "needs verify-key") {
		t.Errorf("runner signing without verify-key: %v", err)
	}
	runnerKey, err := os.ReadFile(filepath.Join(dir, "other.pub"))
	if err != nil {
		t.Fatal(err)
	}
	s.in.verifyKey = strings.TrimSpace(string(runnerKey))
	s.rows = []Row{{StorePath: forged}}
	if verdict, err := s.verifyAll(ctx); verdict != VerdictVerified || err != nil {
		t.Errorf("runner signing: %q %v", verdict, err)
	}
	s.rows = []Row{{StorePath: good}}
	if verdict, _ := s.verifyAll(ctx); verdict != VerdictNotVerified {
		t.Errorf("a path the runner's key did not sign: %q", verdict)
	}
	if left, _ := filepath.Glob(filepath.Join(s.tempDir(), "provenix-verify-*")); len(left) != 0 {
		t.Errorf("the runner's key file is left: %v", left)
	}
}

// TestActionYAML: action.yml declares every input 'provenix action' reads,
// passes each through env, and declares the outputs.
func TestActionYAML(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var y struct {
		Inputs  map[string]any `yaml:"inputs"`
		Outputs map[string]any `yaml:"outputs"`
		Runs    struct {
			Using string `yaml:"using"`
			Steps []struct {
				Shell string            `yaml:"shell"`
				Env   map[string]string `yaml:"env"`
				Run   string            `yaml:"run"`
			} `yaml:"steps"`
		} `yaml:"runs"`
	}
	if err := yaml.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	if y.Runs.Using != "composite" || len(y.Runs.Steps) != 1 || y.Runs.Steps[0].Shell != "bash" || !strings.Contains(y.Runs.Steps[0].Run, "action") {
		t.Fatalf("action.yml: want one composite bash step running 'provenix action': %+v", y.Runs)
	}
	for _, in := range Inputs {
		if _, ok := y.Inputs[in.Name]; !ok {
			t.Errorf("action.yml lacks input %s", in.Name)
		}
		env := "INPUT_" + strings.ToUpper(strings.ReplaceAll(in.Name, "-", "_"))
		if y.Runs.Steps[0].Env[env] != "${{ inputs."+in.Name+" }}" {
			t.Errorf("action.yml does not pass %s as %s", in.Name, env)
		}
	}
	for _, o := range []string{"store-paths", "nar-hashes", "bundle-paths", "verdict"} {
		if _, ok := y.Outputs[o]; !ok {
			t.Errorf("action.yml lacks output %s", o)
		}
	}
}
