package api

import (
	"encoding"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"reflect"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3gen"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

// openAPIPath serves the API's OpenAPI 3 document.
const openAPIPath = "/api/v1/openapi.json"

// routeMux is the API's ServeMux, keeping the patterns registered on it:
// the OpenAPI document describes exactly the routes this server serves
// (GET /metrics only where the member has metrics), and a route without
// its description (routeDocs) is an error of the document, not a gap.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.HandleFunc(pattern, h)
}

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

// Who may call a route (the document's x-vigil-access and its security).
const (
	whoPublic   = "public"   // no credentials
	whoViewer   = "viewer"   // a token of any role, or root on the unix socket
	whoOperator = "operator" // a token of role operator or admin
	whoAdmin    = "admin"    // a token of role admin
	whoHost     = "host"     // a cluster host's certificate, writing under its own name
	whoSecret   = "secret"   // a secret in the body (a join token), or the certificate being renewed
)

// routeDoc describes one route for the OpenAPI document.
type routeDoc struct {
	// Pattern is the route as registered ("GET /api/v1/vms/{name}").
	Pattern string
	Summary string
	Who     string
	// Query are the query parameters, by name, with what each does.
	Query [][2]string
	// Req is a value of the request body's type (nil: no body); ReqType
	// its media type when not JSON.
	Req     any
	ReqType string
	// Resp is a value of the answer's type (nil: none); RespType its
	// media type when not JSON; Status the success status (default 200,
	// or 204 without an answer).
	Resp     any
	RespType string
	Status   int
	// Errors are the route's own error statuses, besides those of its
	// access (401, 403) and 503 (etcd unreachable), which every
	// authenticated route has.
	Errors []int
}

// openAPI serves the document of the routes registered on mux.
func (s *Server) openAPI(mux *routeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		doc, err := openAPIDoc(mux.patterns, s.member.Version)
		if err != nil {
			s.log.Error("the API's OpenAPI document is incomplete", "err", err)
			writeErr(w, http.StatusInternalServerError, err)
			return
		}
		b, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			writeErr(w, http.StatusInternalServerError, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(b, '\n'))
	}
}

// openAPIDoc builds the OpenAPI 3 document of the given registered
// patterns (the catch-all "/" aside). Every pattern must have its
// routeDoc; a routeDoc of a pattern not registered is left out.
func openAPIDoc(patterns []string, version string) (*openapi3.T, error) {
	if version == "" {
		version = "dev"
	}
	doc := &openapi3.T{
		OpenAPI: "3.0.3",
		Info: &openapi3.Info{Title: "Vigil API", Version: version,
			Description: "High availability for QEMU/KVM VMs: VMs, hosts, HA, FT, replication, migration, DRS, alarms (docs/api.md). " +
				"Authenticate with `Authorization: Bearer TOKEN` (vigil token create)."},
		Paths: openapi3.NewPaths(),
		Components: &openapi3.Components{
			Schemas: openapi3.Schemas{},
			SecuritySchemes: openapi3.SecuritySchemes{
				"token": &openapi3.SecuritySchemeRef{Value: openapi3.NewSecurityScheme().WithType("http").WithScheme("bearer").WithDescription("an API token (vgt_...)")},
			},
			Responses: openapi3.ResponseBodies{},
		},
	}
	gen := openapi3gen.NewGenerator(
		openapi3gen.CreateComponentSchemas(openapi3gen.ExportComponentSchemasOptions{ExportComponentSchemas: true}),
		// Types of different packages share names (v1.VM, spec.VM): each
		// schema is named with its package.
		openapi3gen.CreateTypeNameGenerator(func(t reflect.Type) string {
			if t.Name() == "" {
				return ""
			}
			return path.Base(t.PkgPath()) + "." + t.Name()
		}),
		// Sizes and durations travel as text ("2Gi", "30s").
		openapi3gen.SchemaCustomizer(func(_ string, t reflect.Type, _ reflect.StructTag, s *openapi3.Schema) error {
			if t.Kind() != reflect.Struct && t.Implements(reflect.TypeFor[encoding.TextMarshaler]()) {
				*s = *openapi3.NewStringSchema()
			}
			return nil
		}),
	)
	schema := func(v any) (*openapi3.SchemaRef, error) {
		return gen.NewSchemaRefForValue(v, doc.Components.Schemas)
	}
	errSchema, err := schema(v1.Error{})
	if err != nil {
		return nil, err
	}
	byPattern := map[string]routeDoc{}
	for _, d := range routeDocs {
		byPattern[d.Pattern] = d
	}
	var missing []string
	for _, p := range patterns {
		if p == "/" {
			continue
		}
		d, ok := byPattern[p]
		if !ok {
			missing = append(missing, p)
			continue
		}
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			return nil, fmt.Errorf("route %q has no method", p)
		}
		op := openapi3.NewOperation()
		op.Summary = d.Summary
		op.OperationID = operationID(method, path)
		op.Extensions = map[string]any{"x-vigil-access": d.Who}
		switch d.Who {
		case whoPublic, whoSecret, whoHost:
			op.Security = &openapi3.SecurityRequirements{}
		default:
			op.Security = openapi3.NewSecurityRequirements().With(openapi3.NewSecurityRequirement().Authenticate("token"))
		}
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
				op.AddParameter(openapi3.NewPathParameter(strings.Trim(seg, "{}")).WithSchema(openapi3.NewStringSchema()))
			}
		}
		for _, q := range d.Query {
			op.AddParameter(openapi3.NewQueryParameter(q[0]).WithDescription(q[1]).WithSchema(openapi3.NewStringSchema()))
		}
		if d.Req != nil {
			ref, err := schema(d.Req)
			if err != nil {
				return nil, fmt.Errorf("%s: request: %w", p, err)
			}
			mt := d.ReqType
			if mt == "" {
				mt = "application/json"
			}
			op.RequestBody = &openapi3.RequestBodyRef{Value: openapi3.NewRequestBody().WithRequired(true).WithContent(openapi3.NewContentWithSchemaRef(ref, []string{mt}))}
		}
		status := d.Status
		if status == 0 {
			status = http.StatusOK
			if d.Resp == nil && d.RespType == "" {
				status = http.StatusNoContent
			}
		}
		ok200 := openapi3.NewResponse().WithDescription(http.StatusText(status))
		switch {
		case d.Resp != nil:
			ref, err := schema(d.Resp)
			if err != nil {
				return nil, fmt.Errorf("%s: answer: %w", p, err)
			}
			mt := d.RespType
			if mt == "" {
				mt = "application/json"
			}
			ok200.WithContent(openapi3.NewContentWithSchemaRef(ref, []string{mt}))
		case d.RespType != "":
			ok200.WithContent(openapi3.NewContentWithSchema(openapi3.NewStringSchema(), []string{d.RespType}))
		}
		op.AddResponse(status, ok200)
		errs := slices.Clone(d.Errors)
		if d.Who != whoPublic {
			errs = append(errs, http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable)
		}
		slices.Sort(errs)
		for _, code := range slices.Compact(errs) {
			op.AddResponse(code, openapi3.NewResponse().WithDescription(http.StatusText(code)).
				WithContent(openapi3.NewContentWithSchemaRef(errSchema, []string{"application/json"})))
		}
		doc.AddOperation(path, method, op)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("routes without a description (internal/api/openapi_routes.go): %s", strings.Join(missing, ", "))
	}
	return doc, nil
}

// operationID names an operation by its method and path:
// "GET /api/v1/vms/{name}/migration" is getVmsNameMigration.
func operationID(method, path string) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(method))

	for _, seg := range strings.Split(strings.TrimPrefix(path, "/api/v1"), "/") {
		seg = strings.Trim(seg, "{}")
		for _, part := range strings.FieldsFunc(seg, func(r rune) bool { return r == '-' || r == '.' || r == '_' }) {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	if strings.HasSuffix(path, "/") && path != "/" {
		// A subtree ("GET /ui/") apart from its redirect ("GET /ui").
		b.WriteString("Tree")
	}
	return b.String()
}
