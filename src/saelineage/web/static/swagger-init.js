// Swagger UI for /openapi.json (a file, not an inline script, so the CSP can forbid inline code).
window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis], layout: 'BaseLayout'});
