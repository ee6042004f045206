// Package attest builds, signs and verifies the provenance of Nix outputs:
// an in-toto v1 Statement with one subject per output (name = store path,
// digest = sha256 of its NAR) and an SLSA v1 provenance predicate of the
// Nix build type documented in docs/buildtype-nix-v1.md, signed into a
// Sigstore bundle. It returns errors and never logs.
package attest

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"reflect"
	"sort"
	"strings"
	"time"

	slsa "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
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
	Kind string `json:"kind,omitempty"`
	File string `json:"file,omitempty"`
	Attr string `json:"attr,omitempty"`
	Ref  string `json:"ref,omitempty"`
}

// String is the installable as a user would type it: "FILE -A ATTR" for a
// file, the reference (a .drv path or flake installable) otherwise.
func (i Installable) String() string {
	if i.Kind == "file" {
		return i.File + " -A " + i.Attr
	}
	return i.Ref
}

// Source is the version-controlled source the build came from, when known.
type Source struct {
	Repository string `json:"repository,omitempty"`
	Revision   string `json:"revision,omitempty"`
	Ref        string `json:"ref,omitempty"`
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
	Server     string `json:"server,omitempty"`     // forge base URL
	Repository string `json:"repository,omitempty"` // owner/name
	Ref        string `json:"ref,omitempty"`
	Sha        string `json:"sha,omitempty"`
	Workflow   string `json:"workflow,omitempty"` // workflow file or name
	Job        string `json:"job,omitempty"`      // job id
	RunID      string `json:"runId,omitempty"`
	Event      string `json:"event,omitempty"`
	Actor      string `json:"actor,omitempty"`
	// Capture says how the runner learned of the derivation: "step" (a job
	// step asked for it through the runner's socket) or "automatic" (seen
	// realised in the Nix store while the job ran).
	Capture string `json:"capture,omitempty"`
	// Isolation is how the runner kept the job from the others it ran:
	// "uid" (a Unix user no other job had while it ran), "cgroup" (every
	// process of the job in its own cgroup, killed when it ended). Empty
	// for older runners and runners without either.
	Isolation []string `json:"isolation,omitempty"`
}

func (w *Workflow) isZero() bool {
	if w == nil || len(w.Isolation) > 0 {
		return w == nil
	}
	c := *w
	c.Isolation = nil
	return reflect.ValueOf(c).IsZero()
}

// ExternalParameters are the SLSA buildDefinition.externalParameters of
// BuildType (docs/buildtype-nix-v1.md): what was asked to be built. The
// same type is written into a Statement and read back out of one.
type ExternalParameters struct {
	Derivation  string      `json:"derivation"`
	System      string      `json:"system"`
	Installable Installable `json:"installable,omitzero"`
	Source      *Source     `json:"source,omitempty"`
	Workflow    *Workflow   `json:"workflow,omitempty"`
}

// InternalParameters are the SLSA buildDefinition.internalParameters of
// BuildType: what the builder's platform set.
type InternalParameters struct {
	NixVersion   string   `json:"nixVersion,omitempty"`
	Sandbox      string   `json:"sandbox,omitempty"`
	Substituters []string `json:"substituters,omitempty"`
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

	ext := ExternalParameters{Derivation: b.DrvPath, System: b.System, Installable: b.Installable}
	// An empty source or workflow is absent, not {}.
	if b.Source != nil && *b.Source != (Source{}) {
		ext.Source = b.Source
	}
	if !b.Workflow.isZero() {
		ext.Workflow = b.Workflow
	}
	extPB, err := toStruct(ext)
	if err != nil {
		return nil, fmt.Errorf("attest: external parameters: %w", err)
	}
	intPB, err := toStruct(InternalParameters{NixVersion: b.NixVersion, Sandbox: b.Sandbox, Substituters: b.Substituters})
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
	pred, err := PredicateStruct(prov)
	if err != nil {
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

// PredicateStruct is a typed predicate (an in-toto predicate's protobuf
// message) as the Struct a Statement carries.
func PredicateStruct(m proto.Message) (*structpb.Struct, error) {
	return jsonStruct(protojson.Marshal(m))
}

// toStruct is v's JSON as a protobuf Struct: the parameters' json tags
// (omitempty) leave optional fields absent rather than "".
func toStruct(v any) (*structpb.Struct, error) { return jsonStruct(json.Marshal(v)) }

// jsonStruct reads a JSON object (or passes on the error of encoding it).
func jsonStruct(b []byte, err error) (*structpb.Struct, error) {
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil, err
	}
	return s, nil
}

// fromStruct decodes a Struct into the parameters type v points to.
// Unknown fields are ignored: a newer builder may record more, and what
// this version reads keeps its meaning. A known field of the wrong type
// is an error.
func fromStruct(s *structpb.Struct, v any) error {
	if s == nil {
		return nil
	}
	b, err := protojson.Marshal(s)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// Provenance is what a verified Statement says, in Go types.
type Provenance struct {
	// Statement is the Statement read; from Verify (and
	// InspectUnverified) its Predicate is nil: the predicate was read
	// once, typed, into Predicate.
	Statement *intoto.Statement
	Predicate *slsa.Provenance

	DrvPath   string // External.Derivation
	System    string // External.System
	BuilderID string
	Outputs   []Output
	// External and Internal are the build's parameters, in the types
	// NewStatement wrote them from.
	External ExternalParameters
	Internal InternalParameters
	// The run's details (Build's fields of the same names); zero when
	// absent.
	BuilderVersion string
	InvocationID   string
	StartedOn      time.Time
	FinishedOn     time.Time
}

// ParseProvenance reads a Statement into typed provenance, refusing
// anything that is not SLSA v1 provenance of BuildType with a derivation,
// a system and well-formed subjects (errors match ErrPredicateType or
// ErrMalformedBundle). It checks no signature: Verify returns the same
// Provenance for a Statement it verified.
func ParseProvenance(st *intoto.Statement) (*Provenance, error) {
	return parseStatement(st, nil)
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
	}
	if err := fromStruct(prov.GetBuildDefinition().GetExternalParameters(), &p.External); err != nil {
		return nil, fmt.Errorf("%w: external parameters: %w", ErrMalformedBundle, err)
	}
	if err := fromStruct(prov.GetBuildDefinition().GetInternalParameters(), &p.Internal); err != nil {
		return nil, fmt.Errorf("%w: internal parameters: %w", ErrMalformedBundle, err)
	}
	p.DrvPath, p.System = p.External.Derivation, p.External.System
	rd := prov.GetRunDetails()
	p.BuilderVersion = rd.GetBuilder().GetVersion()["provenix"]
	p.InvocationID = rd.GetMetadata().GetInvocationId()
	if t := rd.GetMetadata().GetStartedOn(); t != nil {
		p.StartedOn = t.AsTime()
	}
	if t := rd.GetMetadata().GetFinishedOn(); t != nil {
		p.FinishedOn = t.AsTime()
	}
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
