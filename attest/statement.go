// Package attest builds, signs and verifies the provenance of Nix outputs:
// an in-toto v1 Statement with one subject per output (name = store path,
// digest = sha256 of its NAR) and an SLSA v1 provenance predicate of the
// Nix build type documented in docs/buildtype-nix-v1.md, signed into a
// Sigstore bundle. It returns errors and never logs.
package attest

import (
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	slsa "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// BuildType identifies how to read our provenance; see docs/buildtype-nix-v1.md.
	BuildType = "https://codeberg.org/provenix/provenix/buildtypes/nix/v1"
	// PredicateType is SLSA provenance v1.
	PredicateType = "https://slsa.dev/provenance/v1"
	// PayloadType is the DSSE payload type of an in-toto Statement.
	PayloadType = "application/vnd.in-toto+json"
)

// Annotation keys on each subject. They carry what a narinfo needs beyond
// the NAR hash, so a cache can build the narinfo from signed data only.
const (
	annOutput     = "output"
	annNarSize    = "narSize"
	annReferences = "references"
)

// Output is one realised output of a derivation.
type Output struct {
	Name string // output name, e.g. "out"
	Path string // absolute store path
	// NarHash is the sha256 of the output's NAR serialisation.
	NarHash    [32]byte
	NarSize    uint64
	References []string // absolute store paths
}

// NarHashHex is the lowercase hex form in-toto digests use.
func (o Output) NarHashHex() string { return hex.EncodeToString(o.NarHash[:]) }

// Dependency is an input of the build: the .drv, input derivations and
// input sources, each identified by the sha256 of its NAR.
type Dependency struct {
	Path    string
	NarHash [32]byte
}

// Installable is what was asked to be built, as the user said it.
type Installable struct {
	// Kind is "file" (a .nix file, with Attr), "drv" (a .drv path) or
	// "flake" (a flake installable in Ref).
	Kind string
	File string
	Attr string
	Ref  string
}

// Source is the version-controlled source the build came from, when known.
type Source struct {
	Repository string
	Revision   string
	Ref        string
}

// Isolation a runner records in Workflow.Isolation.
const (
	// IsolationUID: the job ran as a Unix user no other job had while it
	// ran, with no process of that user alive when it started.
	IsolationUID = "uid"
	// IsolationCgroup: every process of the job was in a cgroup of its
	// own, killed (daemons included) when the job ended.
	IsolationCgroup = "cgroup"
	// IsolationPrivateTmp: the job had /tmp and /var/tmp of its own, in a
	// mount namespace of its own.
	IsolationPrivateTmp = "private-tmp"
)

// Workflow is the forge job a build ran in, when a runner built it: what
// the forge told the runner, not what a job step claimed.
type Workflow struct {
	Server     string // forge base URL
	Repository string // owner/name
	Ref        string
	Sha        string
	Workflow   string // workflow file or name
	Job        string // job id
	RunID      string
	Event      string
	Actor      string
	// Capture says how the runner learned of the derivation: "step" (a job
	// step asked for it through the runner's socket) or "automatic" (seen
	// realised in the Nix store while the job ran).
	Capture string
	// Isolation is how the runner kept the job from the others it ran:
	// "uid" (a Unix user no other job had while it ran), "cgroup" (every
	// process of the job in its own cgroup, killed when it ended). Empty
	// for older runners and runners without either.
	Isolation []string
}

// Build describes one realised derivation: everything the Statement says.
type Build struct {
	DrvPath      string
	System       string
	Installable  Installable
	Source       *Source
	Workflow     *Workflow
	Outputs      []Output
	Dependencies []Dependency

	NixVersion   string
	Sandbox      string
	Substituters []string

	BuilderID      string
	BuilderVersion string // the provenix version that signed
	InvocationID   string
	StartedOn      time.Time
	FinishedOn     time.Time
}

// NewStatement returns the in-toto Statement for b.
func NewStatement(b *Build) (*intoto.Statement, error) {
	if b.DrvPath == "" || b.System == "" || b.BuilderID == "" || len(b.Outputs) == 0 {
		return nil, fmt.Errorf("attest: build needs a derivation, a system, a builder id and outputs")
	}
	subjects := make([]*intoto.ResourceDescriptor, 0, len(b.Outputs))
	for _, o := range b.Outputs {
		refs := make([]any, len(o.References))
		for i, r := range o.References {
			refs[i] = r
		}
		ann, err := structpb.NewStruct(map[string]any{
			annOutput:     o.Name,
			annNarSize:    float64(o.NarSize), // JSON numbers: exact below 2^53 bytes
			annReferences: refs,
		})
		if err != nil {
			return nil, fmt.Errorf("attest: subject %s: %w", o.Path, err)
		}
		subjects = append(subjects, &intoto.ResourceDescriptor{
			Name:        o.Path,
			Digest:      map[string]string{"sha256": o.NarHashHex()},
			Annotations: ann,
		})
	}

	ext := map[string]any{
		"derivation": b.DrvPath,
		"system":     b.System,
		"installable": map[string]any{
			"kind": b.Installable.Kind, "file": b.Installable.File,
			"attr": b.Installable.Attr, "ref": b.Installable.Ref,
		},
	}
	if s := b.Source; s != nil {
		ext["source"] = map[string]any{"repository": s.Repository, "revision": s.Revision, "ref": s.Ref}
	}
	if w := b.Workflow; w != nil {
		ext["workflow"] = map[string]any{
			"server": w.Server, "repository": w.Repository, "ref": w.Ref, "sha": w.Sha,
			"workflow": w.Workflow, "job": w.Job, "runId": w.RunID, "event": w.Event,
			"actor": w.Actor, "capture": w.Capture,
		}
		if len(w.Isolation) > 0 {
			iso := make([]any, len(w.Isolation))
			for i, k := range w.Isolation {
				iso[i] = k
			}
			ext["workflow"].(map[string]any)["isolation"] = iso
		}
	}
	extPB, err := structpb.NewStruct(dropEmpty(ext))
	if err != nil {
		return nil, fmt.Errorf("attest: external parameters: %w", err)
	}
	subs := make([]any, len(b.Substituters))
	for i, s := range b.Substituters {
		subs[i] = s
	}
	intPB, err := structpb.NewStruct(dropEmpty(map[string]any{
		"nixVersion": b.NixVersion, "sandbox": b.Sandbox, "substituters": subs,
	}))
	if err != nil {
		return nil, fmt.Errorf("attest: internal parameters: %w", err)
	}
	deps := make([]*intoto.ResourceDescriptor, 0, len(b.Dependencies))
	for _, d := range b.Dependencies {
		deps = append(deps, &intoto.ResourceDescriptor{
			Name: d.Path, Digest: map[string]string{"sha256": hex.EncodeToString(d.NarHash[:])},
		})
	}
	sort.Slice(deps, func(i, j int) bool { return deps[i].Name < deps[j].Name })

	prov := &slsa.Provenance{
		BuildDefinition: &slsa.BuildDefinition{
			BuildType:            BuildType,
			ExternalParameters:   extPB,
			InternalParameters:   intPB,
			ResolvedDependencies: deps,
		},
		RunDetails: &slsa.RunDetails{
			Builder: &slsa.Builder{Id: b.BuilderID},
			Metadata: &slsa.BuildMetadata{
				InvocationId: b.InvocationID,
			},
		},
	}
	if b.BuilderVersion != "" {
		prov.RunDetails.Builder.Version = map[string]string{"provenix": b.BuilderVersion}
	}
	if !b.StartedOn.IsZero() {
		prov.RunDetails.Metadata.StartedOn = timestamppb.New(b.StartedOn)
	}
	if !b.FinishedOn.IsZero() {
		prov.RunDetails.Metadata.FinishedOn = timestamppb.New(b.FinishedOn)
	}
	if err := prov.Validate(); err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	predJSON, err := protojson.Marshal(prov)
	if err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	pred := &structpb.Struct{}
	if err := protojson.Unmarshal(predJSON, pred); err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	st := &intoto.Statement{
		Type:          intoto.StatementTypeUri,
		Subject:       subjects,
		PredicateType: PredicateType,
		Predicate:     pred,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("attest: statement: %w", err)
	}
	return st, nil
}

// dropEmpty removes empty strings and empty nested maps, so optional fields
// are absent rather than "".
func dropEmpty(m map[string]any) map[string]any {
	for k, v := range m {
		switch v := v.(type) {
		case string:
			if v == "" {
				delete(m, k)
			}
		case []any:
			if len(v) == 0 {
				delete(m, k)
			}
		case map[string]any:
			if len(dropEmpty(v)) == 0 {
				delete(m, k)
			}
		}
	}
	return m
}

// Provenance is what a verified Statement says, in Go types.
type Provenance struct {
	Statement *intoto.Statement
	Predicate *slsa.Provenance

	DrvPath   string
	System    string
	BuilderID string
	Outputs   []Output
	// External and Internal are the build's parameters as plain JSON values.
	External map[string]any
	Internal map[string]any
}

// parseStatement reads the fields we rely on out of a Statement, refusing
// anything that is not SLSA v1 provenance of our build type. predJSON, when
// not nil, is the predicate's JSON from the payload st was decoded from:
// decoding it directly spares re-encoding st.Predicate.
func parseStatement(st *intoto.Statement, predJSON []byte) (*Provenance, error) {
	if st.GetType() != intoto.StatementTypeUri {
		return nil, fmt.Errorf("%w: statement type %q", ErrPredicateType, st.GetType())
	}
	if st.GetPredicateType() != PredicateType {
		return nil, fmt.Errorf("%w: predicate type %q, want %q", ErrPredicateType, st.GetPredicateType(), PredicateType)
	}
	if predJSON == nil {
		var err error
		if predJSON, err = protojson.Marshal(st.GetPredicate()); err != nil {
			return nil, fmt.Errorf("%w: predicate: %w", ErrMalformedBundle, err)
		}
	}
	var prov slsa.Provenance
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(predJSON, &prov); err != nil {
		return nil, fmt.Errorf("%w: predicate: %w", ErrMalformedBundle, err)
	}
	if err := prov.Validate(); err != nil {
		return nil, fmt.Errorf("%w: predicate: %w", ErrMalformedBundle, err)
	}
	if bt := prov.GetBuildDefinition().GetBuildType(); bt != BuildType {
		return nil, fmt.Errorf("%w: build type %q, want %q", ErrPredicateType, bt, BuildType)
	}
	p := &Provenance{
		Statement: st,
		Predicate: &prov,
		BuilderID: prov.GetRunDetails().GetBuilder().GetId(),
		External:  prov.GetBuildDefinition().GetExternalParameters().AsMap(),
		Internal:  prov.GetBuildDefinition().GetInternalParameters().AsMap(),
	}
	p.DrvPath, _ = p.External["derivation"].(string)
	p.System, _ = p.External["system"].(string)
	if !isStorePath(p.DrvPath) || !strings.HasSuffix(p.DrvPath, ".drv") || p.System == "" {
		return nil, fmt.Errorf("%w: external parameters lack a derivation or system", ErrMalformedBundle)
	}
	for _, s := range st.GetSubject() {
		o, err := parseSubject(s)
		if err != nil {
			return nil, err
		}
		p.Outputs = append(p.Outputs, o)
	}
	return p, nil
}

func parseSubject(s *intoto.ResourceDescriptor) (Output, error) {
	o := Output{Path: s.GetName()}
	if !isStorePath(o.Path) {
		return o, fmt.Errorf("%w: subject name %q is not a store path", ErrMalformedBundle, o.Path)
	}
	d, err := hex.DecodeString(s.GetDigest()["sha256"])
	if err != nil || len(d) != 32 {
		return o, fmt.Errorf("%w: subject %s: sha256 digest missing or not hex", ErrMalformedBundle, o.Path)
	}
	copy(o.NarHash[:], d)
	ann := s.GetAnnotations().AsMap()
	o.Name, _ = ann[annOutput].(string)
	size, ok := ann[annNarSize].(float64)
	if !ok || size <= 0 || size != float64(uint64(size)) {
		return o, fmt.Errorf("%w: subject %s: narSize missing or not a positive integer", ErrMalformedBundle, o.Path)
	}
	o.NarSize = uint64(size)
	refs, _ := ann[annReferences].([]any)
	for _, r := range refs {
		rs, ok := r.(string)
		if !ok || !isStorePath(rs) {
			return o, fmt.Errorf("%w: subject %s: reference %v is not a store path", ErrMalformedBundle, o.Path, r)
		}
		o.References = append(o.References, rs)
	}
	return o, nil
}

// isStorePath is a shape check (absolute, clean, a name under a store
// directory); it does not assume /nix/store so chroot stores' paths work.
func isStorePath(p string) bool {
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return false
	}
	base := path.Base(p)
	return len(base) > 33 && base[32] == '-'
}
