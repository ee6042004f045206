package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"codeberg.org/provenix/provenix/internal/atomicfile"
)

// ErrConnectionExists: SetConnection would replace a connection.
var ErrConnectionExists = errors.New("connection already exists")

// SetConnection writes conn as server.connections.NAME into the config
// file at path, for `provenix runner register --connection`. The rest of
// the file is kept: other keys, their order and comments (the document is
// edited as a yaml.v3 node tree, then re-indented by two spaces). An
// existing NAME is ErrConnectionExists unless replace. The result must
// load (Parse) before it is written; it is written atomically with mode
// 0600, since it now holds a token.
func SetConnection(path, name string, conn Connection, replace bool) error {
	if name == "" {
		return fmt.Errorf("%w: empty connection name", ErrConfig)
	}
	if err := conn.check(); err != nil {
		return fmt.Errorf("%w: server.connections.%s: %w", ErrConfig, name, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("runner config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("runner config %s: %w: %w", path, ErrConfig, err)
	}
	if doc.Kind == 0 { // an empty file
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	root := doc.Content[0]
	if isEmpty(root) {
		*root = yaml.Node{Kind: yaml.MappingNode}
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("runner config %s: %w: the document is not a mapping", path, ErrConfig)
	}
	server, err := mappingValue(root, "server")
	if err != nil {
		return fmt.Errorf("runner config %s: %w: server: %w", path, ErrConfig, err)
	}
	conns, err := mappingValue(server, "connections")
	if err != nil {
		return fmt.Errorf("runner config %s: %w: server.connections: %w", path, ErrConfig, err)
	}
	value := connectionNode(conn)
	replaced := false
	for i := 0; i+1 < len(conns.Content); i += 2 {
		if conns.Content[i].Value != name {
			continue
		}
		if !replace {
			return fmt.Errorf("runner config %s: server.connections.%s: %w", path, name, ErrConnectionExists)
		}
		// A new registration keeps the connection's own provenix block:
		// its tenant does not change with its token.
		old := conns.Content[i+1]
		for j := 0; old.Kind == yaml.MappingNode && j+1 < len(old.Content); j += 2 {
			if old.Content[j].Value == "provenix" {
				value.Content = append(value.Content, old.Content[j], old.Content[j+1])
			}
		}
		conns.Content[i+1] = value
		replaced = true
	}
	if !replaced {
		conns.Content = append(conns.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name}, value)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("runner config %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("runner config %s: %w", path, err)
	}
	if _, err := Parse(buf.Bytes()); err != nil {
		return fmt.Errorf("runner config %s: the edited file would not load: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("runner config: %w", err)
	}
	return nil
}

// mappingValue returns the mapping under key in m, adding it (or turning
// an empty value into it) when needed.
func mappingValue(m *yaml.Node, key string) (*yaml.Node, error) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		v := m.Content[i+1]
		if isEmpty(v) {
			*v = yaml.Node{Kind: yaml.MappingNode}
		}
		if v.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: not a mapping", v.Line)
		}
		return v, nil
	}
	v := &yaml.Node{Kind: yaml.MappingNode}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	return v, nil
}

// connectionNode writes a connection by hand rather than with
// yaml.Node.Encode, which would write fetch_interval in nanoseconds.
func connectionNode(c Connection) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	add := func(k string, v *yaml.Node) {
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, v)
	}
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }
	add("url", str(c.URL))
	add("uuid", str(c.UUID))
	if c.Token != "" {
		add("token", str(c.Token))
	}
	if c.TokenURL != "" {
		add("token_url", str(c.TokenURL))
	}
	if len(c.Labels) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, l := range c.Labels {
			seq.Content = append(seq.Content, str(l))
		}
		add("labels", seq)
	}
	if c.FetchInterval > 0 {
		add("fetch_interval", str(c.FetchInterval.String()))
	}
	return n
}
