from conftest import hello


def test_a_blocking_get_returns_the_response_dict(make_server, make_client):
    server = make_server([("GET", "/hello", hello)])
    client = make_client(server)
    response = client.get("/hello")
    assert response["code"] == 200
    assert response["body"] == {"msg": "Hello World!"}
